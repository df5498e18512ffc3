//! `weir generate`: sample events for the examples (IoT readings, trades, order events),
//! written to a Kafka topic or a JSONL file.
//!
//! Every record is a pure function of the options: the same seed gives the same records in
//! the same order, so a test computes its oracle from [`records`] while `weir generate`
//! writes the same records to the broker. Each record names the partition it goes to
//! ([`partition_for_key`] of its key, as the `generator` source spreads its sensors) and says
//! what it is ([`Label`]): a valid event, a late one, a duplicate of an earlier record, poison,
//! or (orders) an event that breaks its order's life cycle.
//!
//! - `iot`: the `generator` source's readings ([`EventGenerator`]), `--keys` sensors, each
//!   with a `region` ([`region`]).
//! - `trades`: `{"trade_id","symbol","price","quantity","side","event_time"}`, `--keys`
//!   symbols each with a random-walk price (4 decimals, for `decimal(18, 4)`).
//! - `orders`: envelopes `{"event_id","event_type","order_id","version","correlation_id",
//!   "event_time","payload"}` of OrderPlaced, ItemAdded, PaymentReceived, OrderShipped and
//!   OrderCancelled, `--keys` orders in flight at once; [`order_plan`] is each order's final
//!   state.
//!
//! Event times advance by [`GenerateOptions::interval_ms`] on average and go back by at most
//! [`GenerateOptions::disorder_ms`] (out of order within the bound); a late event goes back
//! by more than twice the bound plus a minute.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use weir_connectors::generator::SplitMix64 as Rng;
use weir_connectors::{partition_for_key, EventGenerator, GeneratorConfig, PoisonKind};

/// Which events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dataset {
    Iot,
    Trades,
    Orders,
}

impl std::fmt::Display for Dataset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Dataset::Iot => "iot",
            Dataset::Trades => "trades",
            Dataset::Orders => "orders",
        })
    }
}

impl std::str::FromStr for Dataset {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "iot" => Ok(Dataset::Iot),
            "trades" => Ok(Dataset::Trades),
            "orders" => Ok(Dataset::Orders),
            other => Err(format!(
                "unknown data set `{other}`: expected iot, trades or orders"
            )),
        }
    }
}

/// What to generate (where it goes is [`Target`]).
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateOptions {
    pub dataset: Dataset,
    /// Records in all (duplicates and poison included).
    pub events: u64,
    /// Sensors (iot), symbols (trades) or orders in flight at once (orders).
    pub keys: u32,
    /// Partitions the keys are spread over.
    pub partitions: u32,
    /// Share (0 to 1) of poison records: invalid JSON, a missing or wrongly typed field, an
    /// empty payload; for orders half of them are events that break the order's life cycle.
    pub poison_ratio: f64,
    /// Share (0 to 1) of late events (iot, trades).
    pub late_ratio: f64,
    /// Share (0 to 1) of records that repeat an earlier record a few records later (a
    /// producer retry): same key, same payload.
    pub duplicate_ratio: f64,
    pub seed: u64,
    /// Event time of the first event, epoch milliseconds.
    pub start_time_ms: i64,
    /// Mean event-time advance per record, milliseconds.
    pub interval_ms: u64,
    /// Bound of the event-time disorder, milliseconds.
    pub disorder_ms: u64,
}

/// 2026-01-05T14:30:00Z.
pub const DEFAULT_START_MS: i64 = 1_767_623_400_000;

impl GenerateOptions {
    /// The defaults of `weir generate` for `dataset`.
    pub fn new(dataset: Dataset) -> Self {
        Self {
            dataset,
            events: 100_000,
            keys: match dataset {
                Dataset::Iot => 100,
                Dataset::Trades => 8,
                Dataset::Orders => 50,
            },
            partitions: 4,
            poison_ratio: 0.0,
            late_ratio: 0.0,
            duplicate_ratio: 0.0,
            seed: 42,
            start_time_ms: DEFAULT_START_MS,
            interval_ms: 10,
            disorder_ms: 2_000,
        }
    }

    /// Every impossible value, as `--flag: problem` lines.
    pub fn validate(&self) -> Vec<String> {
        let mut errors = Vec::new();
        if self.keys == 0 {
            errors.push("--keys: must be at least 1, got 0".to_string());
        }
        if self.partitions == 0 || self.partitions > 1024 {
            errors.push(format!(
                "--partitions: must be between 1 and 1024, got {}",
                self.partitions
            ));
        }
        for (flag, r) in [
            ("--poison-ratio", self.poison_ratio),
            ("--late-ratio", self.late_ratio),
            ("--duplicate-ratio", self.duplicate_ratio),
        ] {
            if !(0.0..=1.0).contains(&r) {
                errors.push(format!("{flag}: must be between 0 and 1, got {r}"));
            }
        }
        if self.poison_ratio + self.late_ratio + self.duplicate_ratio > 1.0 {
            errors.push(format!(
                "--poison-ratio + --late-ratio + --duplicate-ratio: must be at most 1, got {}",
                self.poison_ratio + self.late_ratio + self.duplicate_ratio
            ));
        }
        if self.dataset == Dataset::Orders && self.late_ratio > 0.0 {
            errors.push(
                "--late-ratio: orders are never late (each order's events follow its own clock); use it with iot or trades"
                    .to_string(),
            );
        }
        if self.disorder_ms > 3_600_000 || self.interval_ms > 3_600_000 {
            errors.push("--disorder-ms and --interval-ms: must be at most an hour".to_string());
        }
        errors
    }
}

/// What a record is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Label {
    /// A valid event, in order or out of order within the disorder bound.
    Valid,
    /// A valid event further back in time than the bound allows.
    Late,
    /// The same key and payload as the record at this index of [`records`].
    Duplicate(usize),
    /// A message no decoder accepts.
    Poison,
    /// A valid order event that breaks its order's life cycle (e.g. shipping an unpaid order).
    Illegal,
}

/// One generated record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub partition: i32,
    pub key: String,
    /// `None`: a tombstone (no payload).
    pub payload: Option<Vec<u8>>,
    /// The Kafka timestamp: the event time before disorder.
    pub timestamp_ms: i64,
    pub label: Label,
}

impl Record {
    /// The payload as text (empty for a tombstone).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(self.payload.as_deref().unwrap_or_default()).into_owned()
    }
}

/// The records of `opts`, in the order they are written (a valid `opts`: see
/// [`GenerateOptions::validate`]).
pub fn records(opts: &GenerateOptions) -> Vec<Record> {
    let mut out = Vec::with_capacity(usize::try_from(opts.events).unwrap_or(0));
    for_each_record(opts, |r| {
        out.push(r);
        true
    });
    out
}

/// Calls `f` with each record of `opts` in order until it returns false; for generating more
/// records than fit in memory.
pub fn for_each_record(opts: &GenerateOptions, mut f: impl FnMut(Record) -> bool) {
    drive(opts, &mut Body::new(opts), |r, _| f(r));
}

/// The records of `opts` made by `body`, each passed to `f` with the body's state after it
/// (the orders in flight) until `f` returns false.
fn drive(opts: &GenerateOptions, body: &mut Body, mut f: impl FnMut(Record, &Body) -> bool) {
    let mut rng = Rng(opts.seed ^ 0x005E_ED0F_0E1D);
    // Records to repeat: (due at index, index of the original).
    let mut pending: VecDeque<(u64, usize)> = VecDeque::new();
    // The last records (a duplicate repeats one at most 20 records back): `recent[0]` is
    // record `recent_base`.
    let mut recent: VecDeque<Record> = VecDeque::new();
    let mut recent_base = 0usize;
    let keep_for_duplicates = opts.duplicate_ratio > 0.0;
    for i in 0..opts.events {
        let r = match pending.front() {
            Some(&(due, original)) if due <= i => {
                pending.pop_front();
                let mut r = recent[original - recent_base].clone();
                r.label = Label::Duplicate(original);
                r
            }
            _ => {
                let roll = rng.unit();
                let kind = if roll < opts.poison_ratio {
                    Kind::Poison
                } else if roll < opts.poison_ratio + opts.late_ratio {
                    Kind::Late
                } else {
                    Kind::Valid
                };
                let r = body.next(&mut rng, kind);
                if keep_for_duplicates
                    && r.label == Label::Valid
                    && rng.unit() < opts.duplicate_ratio / (1.0 - opts.duplicate_ratio).max(1e-9)
                {
                    // A retry 1 to 20 records later.
                    let due = i + 1 + rng.below(20);
                    let at = pending.partition_point(|(d, _)| *d <= due);
                    pending.insert(at, (due, i as usize));
                }
                r
            }
        };
        if keep_for_duplicates {
            recent.push_back(r.clone());
            while recent.len() > 64 {
                recent.pop_front();
                recent_base += 1;
            }
        }
        if !f(r, body) {
            return;
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Valid,
    Late,
    Poison,
}

/// The per-dataset state that makes the next record.
enum Body {
    Iot(IotBody),
    Trades(TradesBody),
    Orders(OrdersBody),
}

impl Body {
    fn new(opts: &GenerateOptions) -> Self {
        match opts.dataset {
            Dataset::Iot => Body::Iot(IotBody::new(opts)),
            Dataset::Trades => Body::Trades(TradesBody::new(opts)),
            Dataset::Orders => Body::Orders(OrdersBody::new(opts)),
        }
    }

    fn next(&mut self, rng: &mut Rng, kind: Kind) -> Record {
        match self {
            Body::Iot(b) => b.next(rng, kind),
            Body::Trades(b) => b.next(rng, kind),
            Body::Orders(b) => b.next(rng, kind),
        }
    }
}

/// Event time of one record: a clock that advances by 0 to `2 * interval_ms`, minus the
/// disorder (or, for a late event, more than twice the bound plus a minute).
struct Clock {
    now: i64,
    interval_ms: u64,
    disorder_ms: u64,
}

impl Clock {
    fn new(opts: &GenerateOptions) -> Self {
        Self {
            now: opts.start_time_ms,
            interval_ms: opts.interval_ms,
            disorder_ms: opts.disorder_ms,
        }
    }

    /// Advances the clock; (Kafka timestamp, event time).
    fn tick(&mut self, rng: &mut Rng, late: bool) -> (i64, i64) {
        self.now += rng.below(2 * self.interval_ms + 1) as i64;
        let back = if late {
            2 * self.disorder_ms + 60_000 + rng.below(60_001)
        } else {
            rng.below(self.disorder_ms + 1)
        };
        (self.now, self.now - back as i64)
    }
}

/// The `generator` source's readings, one partition after another interleaved by offset.
struct IotBody {
    truth: EventGenerator,
    partitions: i32,
    next_offset: Vec<i64>,
    turn: i32,
}

impl IotBody {
    fn new(opts: &GenerateOptions) -> Self {
        let truth = EventGenerator::new(&GeneratorConfig {
            seed: opts.seed,
            sensors: opts.keys,
            partitions: opts.partitions,
            events: None,
            disorder_ms: opts.disorder_ms,
            start_time_ms: opts.start_time_ms,
            event_interval_ms: (opts.interval_ms * u64::from(opts.partitions)).max(1),
            ..GeneratorConfig::default()
        });
        let partitions = truth.partitions();
        Self {
            truth,
            partitions,
            next_offset: vec![0; partitions.max(0) as usize],
            turn: 0,
        }
    }

    fn next(&mut self, rng: &mut Rng, kind: Kind) -> Record {
        // The next partition that has sensors (with fewer sensors than partitions, some have
        // none).
        let mut p = self.turn;
        while self.truth.sensors_of(p).is_empty() {
            p = (p + 1) % self.partitions;
        }
        self.turn = (p + 1) % self.partitions;
        let offset = self.next_offset[p as usize];
        self.next_offset[p as usize] += 1;
        let mut e = self
            .truth
            .event(p, offset)
            .expect("invariant: a partition with sensors has every offset");
        // The mix is ours, not the source's own ratios.
        e.poison = (kind == Kind::Poison)
            .then(|| PoisonKind::ALL[rng.below(PoisonKind::ALL.len() as u64) as usize]);
        e.late = kind == Kind::Late;
        if e.late {
            e.event_time_ms -=
                (2 * self.truth.config().disorder_ms + 60_000) as i64 + rng.below(60_001) as i64;
        }
        let mut m = self.truth.encode(&e);
        // The sensor's region, for rollups over sensors (a field the `generator` source has not).
        if let Some(body) = m.payload.as_mut().filter(|b| b.ends_with(b"}")) {
            body.pop();
            body.extend_from_slice(format!(r#","region":"{}"}}"#, region(e.sensor)).as_bytes());
        }
        Record {
            partition: p,
            key: e.sensor_id(),
            payload: m.payload,
            timestamp_ms: m.timestamp_ms.unwrap_or(e.event_time_ms),
            label: label_of(kind),
        }
    }
}

/// The regions of the IoT sensors: sensor `n` is in `REGIONS[n % 5]`.
pub const REGIONS: [&str; 5] = ["eu-west", "eu-north", "us-east", "us-west", "ap-south"];

/// The region of `sensor-<n>`.
pub fn region(n: u32) -> &'static str {
    REGIONS[n as usize % REGIONS.len()]
}

fn label_of(kind: Kind) -> Label {
    match kind {
        Kind::Valid => Label::Valid,
        Kind::Late => Label::Late,
        Kind::Poison => Label::Poison,
    }
}

/// Ticker symbols of the trades; past the list, `SYM<n>`.
const SYMBOLS: [&str; 12] = [
    "AAPL", "MSFT", "NVDA", "AMZN", "GOOG", "META", "TSLA", "AMD", "NFLX", "INTC", "ORCL", "IBM",
];

/// The symbol of key `n`.
pub fn symbol(n: u32) -> String {
    SYMBOLS
        .get(n as usize)
        .map_or_else(|| format!("SYM{n}"), |s| s.to_string())
}

/// `units / 10^scale` as exact decimal text with `scale` fraction digits.
pub fn decimal_text(units: i128, scale: u32) -> String {
    let div = 10i128.pow(scale);
    let sign = if units < 0 { "-" } else { "" };
    let abs = units.unsigned_abs();
    let div = div.unsigned_abs();
    if scale == 0 {
        return format!("{sign}{abs}");
    }
    format!(
        "{sign}{}.{:0width$}",
        abs / div,
        abs % div,
        width = scale as usize
    )
}

/// Trades: each symbol's price walks by up to 25 ticks of 0.0001 per trade.
struct TradesBody {
    clock: Clock,
    partitions: u32,
    /// Price of each symbol in ten-thousandths.
    prices: Vec<i64>,
    seq: u64,
}

impl TradesBody {
    fn new(opts: &GenerateOptions) -> Self {
        let mut rng = Rng(opts.seed ^ 0x007E_ADE5);
        let prices = (0..opts.keys)
            .map(|_| (20 + rng.below(480) as i64) * 10_000 + rng.below(10_000) as i64)
            .collect();
        Self {
            clock: Clock::new(opts),
            partitions: opts.partitions,
            prices,
            seq: 0,
        }
    }

    fn next(&mut self, rng: &mut Rng, kind: Kind) -> Record {
        let n = rng.below(self.prices.len() as u64) as usize;
        let step = rng.below(51) as i64 - 25;
        let price = (self.prices[n] + step).max(10_000);
        self.prices[n] = price;
        let quantity = 1 + rng.below(500);
        let side = if rng.below(2) == 0 { "buy" } else { "sell" };
        let (timestamp_ms, event_time) = self.clock.tick(rng, kind == Kind::Late);
        self.seq += 1;
        let sym = symbol(n as u32);
        let trade_id = format!("T{:09}", self.seq);
        let price_text = decimal_text(i128::from(price), 4);
        let payload = if kind == Kind::Poison {
            match rng.below(4) {
                0 => Some(format!(r#"{{"trade_id":"{trade_id}","symbol":"{sym}","price":"#).into_bytes()),
                // Five fraction digits do not fit decimal(18, 4).
                1 => Some(format!(r#"{{"trade_id":"{trade_id}","symbol":"{sym}","price":{price_text}1,"quantity":{quantity},"side":"{side}","event_time":{event_time}}}"#).into_bytes()),
                2 => Some(format!(r#"{{"trade_id":"{trade_id}","symbol":"{sym}","price":{price_text},"quantity":"lots","side":"{side}","event_time":{event_time}}}"#).into_bytes()),
                _ => Some(Vec::new()),
            }
        } else {
            Some(format!(r#"{{"trade_id":"{trade_id}","symbol":"{sym}","price":{price_text},"quantity":{quantity},"side":"{side}","event_time":{event_time}}}"#).into_bytes())
        };
        Record {
            partition: partition_for_key(sym.as_bytes(), self.partitions),
            key: sym,
            payload,
            timestamp_ms,
            label: label_of(kind),
        }
    }
}

/// Where an order is in its life cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrderStatus {
    Placed,
    Paid,
    Shipped,
    Cancelled,
}

impl OrderStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::Placed => "placed",
            OrderStatus::Paid => "paid",
            OrderStatus::Shipped => "shipped",
            OrderStatus::Cancelled => "cancelled",
        }
    }
}

/// An order's state after all of its legal events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderState {
    pub status: OrderStatus,
    /// Sum of item price * quantity, in hundredths.
    pub total_cents: i64,
    /// Sum of item quantities.
    pub items: i64,
    /// Version of the last legal event (1 for OrderPlaced).
    pub version: i64,
    pub customer: String,
}

/// One order in flight.
struct OpenOrder {
    id: u64,
    state: OrderState,
    /// ItemAdded events still to come before the payment.
    items_left: u32,
    /// Cancelled after this many more events, if it is cancelled at all.
    cancel_after: Option<u32>,
}

/// Order events: `keys` orders in flight; each event goes to a random one of them.
struct OrdersBody {
    clock: Clock,
    partitions: u32,
    keys: usize,
    open: Vec<OpenOrder>,
    next_order: u64,
    seq: u64,
}

impl OrdersBody {
    fn new(opts: &GenerateOptions) -> Self {
        Self {
            clock: Clock::new(opts),
            partitions: opts.partitions,
            keys: opts.keys as usize,
            open: Vec::new(),
            next_order: 0,
            seq: 0,
        }
    }

    fn next(&mut self, rng: &mut Rng, kind: Kind) -> Record {
        let (timestamp_ms, event_time) = self.clock.tick(rng, false);
        self.seq += 1;
        let event_id = format!("E{:09}", self.seq);
        // A new order (while fewer than `keys` are open) or the next event of an open one.
        let start_new = self.open.is_empty() || (self.open.len() < self.keys && rng.below(2) == 0);
        if kind == Kind::Poison && !self.open.is_empty() && rng.below(2) == 0 {
            return self.illegal(rng, event_id, timestamp_ms, event_time);
        }
        if kind == Kind::Poison {
            let order_id = format!("O{:07}", self.next_order);
            let payload = match rng.below(3) {
                0 => format!(r#"{{"event_id":"{event_id}","event_type":"OrderPlaced","order_id":"#),
                1 => format!(
                    r#"{{"event_id":"{event_id}","event_type":"OrderPlaced","order_id":"{order_id}","version":"one","correlation_id":"C{order_id}","event_time":{event_time},"payload":{{}}}}"#
                ),
                _ => String::new(),
            };
            return Record {
                partition: partition_for_key(order_id.as_bytes(), self.partitions),
                key: order_id,
                payload: Some(payload.into_bytes()),
                timestamp_ms,
                label: Label::Poison,
            };
        }
        if start_new {
            return self.place(rng, event_id, timestamp_ms, event_time);
        }
        let at = rng.below(self.open.len() as u64) as usize;
        let o = &mut self.open[at];
        o.state.version += 1;
        let version = o.state.version;
        let cancel = o.cancel_after.is_some_and(|n| n == 0);
        if let Some(n) = &mut o.cancel_after {
            *n = n.saturating_sub(1);
        }
        let (event_type, body) = if cancel {
            o.state.status = OrderStatus::Cancelled;
            (
                "OrderCancelled",
                r#"{"reason":"customer request"}"#.to_string(),
            )
        } else if o.items_left > 0 {
            o.items_left -= 1;
            let quantity = 1 + rng.below(3) as i64;
            let price_cents = 100 + rng.below(9_900) as i64;
            o.state.items += quantity;
            o.state.total_cents += quantity * price_cents;
            (
                "ItemAdded",
                format!(
                    r#"{{"sku":"SKU-{}","quantity":{quantity},"price":{}}}"#,
                    rng.below(500),
                    decimal_text(i128::from(price_cents), 2)
                ),
            )
        } else if o.state.status == OrderStatus::Placed {
            o.state.status = OrderStatus::Paid;
            (
                "PaymentReceived",
                format!(
                    r#"{{"amount":{}}}"#,
                    decimal_text(i128::from(o.state.total_cents), 2)
                ),
            )
        } else {
            o.state.status = OrderStatus::Shipped;
            ("OrderShipped", r#"{"carrier":"DHL"}"#.to_string())
        };
        let id = o.id;
        let done = matches!(
            o.state.status,
            OrderStatus::Shipped | OrderStatus::Cancelled
        );
        if done {
            self.open.swap_remove(at);
        }
        self.envelope(
            id,
            &event_id,
            event_type,
            version,
            event_time,
            timestamp_ms,
            &body,
            Label::Valid,
        )
    }

    fn place(
        &mut self,
        rng: &mut Rng,
        event_id: String,
        timestamp_ms: i64,
        event_time: i64,
    ) -> Record {
        let id = self.next_order;
        self.next_order += 1;
        let customer = format!("CUST{:04}", rng.below(1000));
        let items_left = 1 + rng.below(4) as u32;
        // One order in five is cancelled somewhere along its life cycle.
        let cancel_after = (rng.below(5) == 0).then(|| rng.below(u64::from(items_left) + 2) as u32);
        self.open.push(OpenOrder {
            id,
            state: OrderState {
                status: OrderStatus::Placed,
                total_cents: 0,
                items: 0,
                version: 1,
                customer: customer.clone(),
            },
            items_left,
            cancel_after,
        });
        let body = format!(r#"{{"customer_id":"{customer}","currency":"EUR"}}"#);
        self.envelope(
            id,
            &event_id,
            "OrderPlaced",
            1,
            event_time,
            timestamp_ms,
            &body,
            Label::Valid,
        )
    }

    /// An event its order's state does not allow: shipping or paying an order that is not
    /// ready, or adding an item after the payment. It does not change the order.
    fn illegal(
        &mut self,
        rng: &mut Rng,
        event_id: String,
        timestamp_ms: i64,
        event_time: i64,
    ) -> Record {
        let at = rng.below(self.open.len() as u64) as usize;
        let o = &self.open[at];
        let (event_type, body) = match o.state.status {
            OrderStatus::Placed => ("OrderShipped", r#"{"carrier":"DHL"}"#.to_string()),
            _ => (
                "ItemAdded",
                r#"{"sku":"SKU-1","quantity":1,"price":1.00}"#.to_string(),
            ),
        };
        // The version the event claims: the next one (it is refused, so the order's own
        // version does not move).
        let version = o.state.version + 1;
        let id = o.id;
        self.envelope(
            id,
            &event_id,
            event_type,
            version,
            event_time,
            timestamp_ms,
            &body,
            Label::Illegal,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn envelope(
        &self,
        order: u64,
        event_id: &str,
        event_type: &str,
        version: i64,
        event_time: i64,
        timestamp_ms: i64,
        body: &str,
        label: Label,
    ) -> Record {
        let order_id = format!("O{order:07}");
        let payload = format!(
            r#"{{"event_id":"{event_id}","event_type":"{event_type}","order_id":"{order_id}","version":{version},"correlation_id":"C{order_id}","event_time":{event_time},"payload":{body}}}"#
        );
        Record {
            partition: partition_for_key(order_id.as_bytes(), self.partitions),
            key: order_id,
            payload: Some(payload.into_bytes()),
            timestamp_ms,
            label,
        }
    }
}

/// The final state of every order of `opts` (a `Dataset::Orders` options), from the
/// generator's plan, not from folding the events: what a read model must hold once it has
/// applied every legal event (a cancelled order is deleted from it).
pub fn order_plan(opts: &GenerateOptions) -> BTreeMap<String, OrderState> {
    let mut plan = BTreeMap::new();
    drive(opts, &mut Body::new(opts), |r, body| {
        if let (Label::Valid, Body::Orders(orders)) = (r.label, body) {
            record_state(&mut plan, orders, &r);
        }
        true
    });
    plan
}

/// After `r` (a legal event), the state of its order: from the open orders, or, for an order
/// that just finished, from the event itself.
fn record_state(plan: &mut BTreeMap<String, OrderState>, body: &OrdersBody, r: &Record) {
    let text = r.text();
    if let Some(o) = body.open.iter().find(|o| format!("O{:07}", o.id) == r.key) {
        plan.insert(r.key.clone(), o.state.clone());
        return;
    }
    let state = plan
        .get_mut(&r.key)
        .expect("invariant: a finished order was open before");
    state.version += 1;
    if text.contains(r#""event_type":"OrderCancelled""#) {
        state.status = OrderStatus::Cancelled;
    } else {
        state.status = OrderStatus::Shipped;
    }
}

/// Where `weir generate` writes.
#[derive(Debug, Clone)]
pub enum Target {
    Kafka { brokers: String, topic: String },
    File(PathBuf),
}

/// What `weir generate` wrote, by label.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct GenerateReport {
    pub records: u64,
    pub valid: u64,
    pub late: u64,
    pub duplicates: u64,
    pub poison: u64,
    pub illegal: u64,
    pub partitions: u32,
}

impl GenerateReport {
    fn count(&mut self, r: &Record) {
        self.records += 1;
        match r.label {
            Label::Valid => self.valid += 1,
            Label::Late => self.late += 1,
            Label::Duplicate(_) => self.duplicates += 1,
            Label::Poison => self.poison += 1,
            Label::Illegal => self.illegal += 1,
        }
    }
}

impl std::fmt::Display for GenerateReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} records over {} partitions: {} valid, {} late, {} duplicates, {} poison",
            self.records, self.partitions, self.valid, self.late, self.duplicates, self.poison
        )?;
        if self.illegal > 0 {
            write!(f, ", {} illegal transitions", self.illegal)?;
        }
        Ok(())
    }
}

/// Writes the records of `opts` to `target`, at most `rate` records per second, drawing a
/// progress line on stderr when it is a terminal; stops early (with what was written) when
/// `stop` returns true.
pub fn run(
    opts: &GenerateOptions,
    target: &Target,
    rate: Option<u64>,
    stop: &dyn Fn() -> bool,
) -> anyhow::Result<GenerateReport> {
    let mut out: Box<dyn RecordWriter> = match target {
        Target::Kafka { brokers, topic } => {
            Box::new(KafkaWriter::connect(brokers, topic, opts.partitions)?)
        }
        Target::File(path) => Box::new(FileWriter::create(path)?),
    };
    let mut report = GenerateReport {
        partitions: opts.partitions,
        ..Default::default()
    };
    let progress = std::io::stderr().is_terminal();
    let started = Instant::now();
    let mut last_draw = started;
    let mut error = None;
    for_each_record(opts, |r| {
        if let Some(rate) = rate {
            let due = started + Duration::from_secs_f64(report.records as f64 / rate as f64);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        if let Err(e) = out.write(&r) {
            error = Some(e);
            return false;
        }
        report.count(&r);
        if progress && last_draw.elapsed() >= Duration::from_millis(100) {
            last_draw = Instant::now();
            draw(&report, opts.events, started);
        }
        !stop()
    });
    if let Some(e) = error {
        return Err(e);
    }
    out.finish()?;
    if progress {
        draw(&report, opts.events, started);
        eprintln!();
    }
    Ok(report)
}

fn draw(report: &GenerateReport, total: u64, started: Instant) {
    let secs = started.elapsed().as_secs_f64().max(1e-9);
    let mut line = String::new();
    let _ = write!(
        line,
        "\rgenerate: {}/{} records ({:.0}%), {:.0}/s",
        report.records,
        total,
        100.0 * report.records as f64 / total.max(1) as f64,
        report.records as f64 / secs
    );
    let mut err = std::io::stderr();
    let _ = err.write_all(line.as_bytes());
    let _ = err.flush();
}

trait RecordWriter {
    fn write(&mut self, r: &Record) -> anyhow::Result<()>;
    fn finish(&mut self) -> anyhow::Result<()>;
}

struct FileWriter {
    path: PathBuf,
    out: std::io::BufWriter<std::fs::File>,
}

impl FileWriter {
    fn create(path: &std::path::Path) -> anyhow::Result<Self> {
        let file = std::fs::File::create(path)
            .map_err(|e| anyhow::anyhow!("--out {}: {e}", path.display()))?;
        Ok(Self {
            path: path.to_path_buf(),
            out: std::io::BufWriter::new(file),
        })
    }
}

impl RecordWriter for FileWriter {
    /// One payload per line (a tombstone is an empty line, dead-lettered as an empty message).
    fn write(&mut self, r: &Record) -> anyhow::Result<()> {
        let io = |e: std::io::Error| anyhow::anyhow!("--out {}: {e}", self.path.display());
        self.out
            .write_all(r.payload.as_deref().unwrap_or_default())
            .and_then(|()| self.out.write_all(b"\n"))
            .map_err(io)
    }

    fn finish(&mut self) -> anyhow::Result<()> {
        self.out
            .flush()
            .map_err(|e| anyhow::anyhow!("--out {}: {e}", self.path.display()))
    }
}

struct KafkaWriter {
    producer: rdkafka::producer::BaseProducer,
    topic: String,
}

impl KafkaWriter {
    /// Creates `topic` with `partitions` partitions when it does not exist; refuses one that
    /// exists with another number of partitions (the records' partitions would not be theirs).
    fn connect(brokers: &str, topic: &str, partitions: u32) -> anyhow::Result<Self> {
        use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
        use rdkafka::client::DefaultClientContext;
        use rdkafka::producer::Producer;
        use rdkafka::ClientConfig;
        let timeout = Duration::from_secs(10);
        let producer: rdkafka::producer::BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("linger.ms", "20")
            .set("enable.idempotence", "true")
            // The metadata request below must not create the topic with the broker's defaults.
            .set("allow.auto.create.topics", "false")
            .create()
            .map_err(|e| anyhow::anyhow!("--brokers {brokers}: {e}"))?;
        let meta = producer
            .client()
            .fetch_metadata(Some(topic), timeout)
            .map_err(|e| {
                anyhow::anyhow!("--brokers {brokers}: no answer within {timeout:?}: {e}")
            })?;
        let existing = meta
            .topics()
            .iter()
            .find(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty())
            .map(|t| t.partitions().len());
        match existing {
            Some(n) if n as u32 == partitions => {}
            Some(n) => anyhow::bail!(
                "--topic {topic}: has {n} partitions, not {partitions}: pass --partitions {n} (each key's partition is computed from the number of partitions)"
            ),
            None => {
                let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
                    .set("bootstrap.servers", brokers)
                    .create()
                    .map_err(|e| anyhow::anyhow!("--brokers {brokers}: {e}"))?;
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                let results = rt
                    .block_on(admin.create_topics(
                        &[NewTopic::new(
                            topic,
                            partitions as i32,
                            TopicReplication::Fixed(1),
                        )],
                        &AdminOptions::new().operation_timeout(Some(timeout)),
                    ))
                    .map_err(|e| anyhow::anyhow!("--topic {topic}: could not create it: {e}"))?;
                for r in results {
                    match r {
                        Ok(_) | Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {}
                        Err((_, code)) => {
                            anyhow::bail!("--topic {topic}: could not create it: {code}")
                        }
                    }
                }
            }
        }
        Ok(Self {
            producer,
            topic: topic.to_string(),
        })
    }
}

impl RecordWriter for KafkaWriter {
    fn write(&mut self, r: &Record) -> anyhow::Result<()> {
        use rdkafka::producer::BaseRecord;
        let mut record: BaseRecord<'_, str, [u8]> = BaseRecord::to(&self.topic)
            .partition(r.partition)
            .key(r.key.as_str())
            .timestamp(r.timestamp_ms);
        if let Some(p) = &r.payload {
            record = record.payload(p.as_slice());
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                Err((e, back)) => {
                    let full = matches!(
                        e.rdkafka_error_code(),
                        Some(rdkafka::types::RDKafkaErrorCode::QueueFull)
                    );
                    if !full || Instant::now() > deadline {
                        anyhow::bail!("--topic {}: {e}", self.topic);
                    }
                    self.producer.poll(Duration::from_millis(10));
                    record = back;
                }
            }
        }
    }

    fn finish(&mut self) -> anyhow::Result<()> {
        use rdkafka::producer::Producer;
        self.producer.flush(Duration::from_secs(60)).map_err(|e| {
            anyhow::anyhow!(
                "--topic {}: not every record was acknowledged: {e}",
                self.topic
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(dataset: Dataset) -> GenerateOptions {
        GenerateOptions {
            events: 5_000,
            poison_ratio: 0.02,
            late_ratio: if dataset == Dataset::Orders {
                0.0
            } else {
                0.02
            },
            duplicate_ratio: 0.05,
            ..GenerateOptions::new(dataset)
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_records_and_another_seed_others() {
        for d in [Dataset::Iot, Dataset::Trades, Dataset::Orders] {
            let a = records(&opts(d));
            assert_eq!(a.len(), 5_000);
            assert_eq!(a, records(&opts(d)));
            let other = records(&GenerateOptions { seed: 7, ..opts(d) });
            assert_ne!(a, other);
        }
    }

    #[test]
    fn ratios_give_about_that_share_of_each_label_and_duplicates_repeat_their_original() {
        for d in [Dataset::Iot, Dataset::Trades, Dataset::Orders] {
            let rs = records(&opts(d));
            let count = |f: &dyn Fn(&Label) -> bool| rs.iter().filter(|r| f(&r.label)).count();
            let poison = count(&|l| matches!(l, Label::Poison | Label::Illegal));
            let dups = count(&|l| matches!(l, Label::Duplicate(_)));
            assert!((50..=160).contains(&poison), "{d:?}: {poison} poison");
            assert!((150..=400).contains(&dups), "{d:?}: {dups} duplicates");
            for (i, r) in rs.iter().enumerate() {
                if let Label::Duplicate(of) = r.label {
                    assert!(of < i && i - of <= 40, "{d:?}: {of} -> {i}");
                    assert_eq!(r.payload, rs[of].payload);
                    assert_eq!((r.partition, &r.key), (rs[of].partition, &rs[of].key));
                }
            }
        }
    }

    #[test]
    fn every_key_lives_in_one_partition() {
        for d in [Dataset::Iot, Dataset::Trades, Dataset::Orders] {
            let mut seen = BTreeMap::new();
            for r in records(&opts(d)) {
                assert_eq!(
                    *seen.entry(r.key.clone()).or_insert(r.partition),
                    r.partition
                );
            }
            assert!(seen.len() > 1);
        }
    }

    #[test]
    fn trades_event_times_stay_within_the_disorder_bound_unless_late() {
        let o = opts(Dataset::Trades);
        let mut max = i64::MIN;
        for r in records(&o) {
            let v: serde_json::Value = match serde_json::from_slice(r.payload.as_deref().unwrap()) {
                Ok(v) => v,
                Err(_) => continue,
            };
            let t = v["event_time"].as_i64().unwrap_or(max);
            if max == i64::MIN && r.label != Label::Valid {
                continue;
            }
            match r.label {
                Label::Valid => {
                    assert!(t >= max.saturating_sub(o.disorder_ms as i64));
                    max = max.max(t);
                }
                Label::Late => assert!(t < max - 2 * o.disorder_ms as i64 - 50_000, "{t} {max}"),
                _ => {}
            }
        }
    }

    #[test]
    fn the_order_plan_is_the_state_after_each_orders_legal_events() {
        let o = opts(Dataset::Orders);
        let plan = order_plan(&o);
        // Fold the legal events by hand: the plan agrees with what they say.
        let mut last: BTreeMap<String, (String, i64)> = BTreeMap::new();
        for r in records(&o) {
            if r.label != Label::Valid {
                continue;
            }
            let v: serde_json::Value =
                serde_json::from_slice(r.payload.as_deref().unwrap()).unwrap();
            last.insert(
                r.key.clone(),
                (
                    v["event_type"].as_str().unwrap().to_string(),
                    v["version"].as_i64().unwrap(),
                ),
            );
        }
        assert_eq!(plan.len(), last.len());
        for (id, (ty, version)) in &last {
            let s = &plan[id];
            assert_eq!(s.version, *version, "{id}");
            let want = match ty.as_str() {
                "OrderPlaced" | "ItemAdded" => OrderStatus::Placed,
                "PaymentReceived" => OrderStatus::Paid,
                "OrderShipped" => OrderStatus::Shipped,
                _ => OrderStatus::Cancelled,
            };
            assert_eq!(s.status, want, "{id}");
        }
        assert!(plan.values().any(|s| s.status == OrderStatus::Cancelled));
        assert!(plan.values().any(|s| s.status == OrderStatus::Shipped));
    }

    #[test]
    fn impossible_options_are_refused_naming_the_flag() {
        let bad = GenerateOptions {
            keys: 0,
            poison_ratio: 1.5,
            late_ratio: 0.1,
            ..GenerateOptions::new(Dataset::Orders)
        };
        let errors = bad.validate().join("\n");
        assert!(errors.contains("--keys: must be at least 1"), "{errors}");
        assert!(
            errors.contains("--poison-ratio: must be between 0 and 1, got 1.5"),
            "{errors}"
        );
        assert!(
            errors.contains("--late-ratio: orders are never late"),
            "{errors}"
        );
    }
}
