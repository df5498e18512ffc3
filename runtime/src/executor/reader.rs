//! The reader thread of a partition: blocking reads, backpressure (pause) and the
//! caught-up signal that idleness is decided by.

use super::*;

/// A reader blocked this long on a full channel pauses its partition.
pub(super) const PAUSE_AFTER: Duration = Duration::from_millis(100);

pub(super) enum ReaderMsg {
    Batch(RawBatch),
    End,
    /// The reader found nothing to read (its source said so): the partition may be idle.
    /// Sent once per stretch without input; a reader that is merely slow never sends it.
    CaughtUp,
}

/// The reader thread of one partition: reads until its end, an error, or one of `stops`.
/// When downstream stays full it pauses the partition until there is room again.
pub(super) fn spawn_reader(
    mut reader: Box<dyn PartitionReader>,
    tx: Sender<ReaderMsg>,
    stops: [Shutdown; 2],
    (max_rows, linger): (usize, Duration),
    metrics: Arc<Metrics>,
    live: Arc<PartitionMetrics>,
) -> Result<JoinHandle<Result<()>>> {
    let partition = live.partition;
    thread::Builder::new()
        .name(format!("weir-read-{partition}"))
        .spawn(move || -> Result<()> {
            let stopped = || stops.iter().any(Shutdown::is_triggered);
            let mut caught_up = false;
            while !stopped() {
                let msg = match reader.read(max_rows, linger)? {
                    ReadResult::Batch(b) if b.is_empty() => continue,
                    ReadResult::Batch(b) => {
                        caught_up = false;
                        let bytes: usize = b
                            .messages
                            .iter()
                            .map(|m| {
                                m.payload.as_ref().map_or(0, Vec::len)
                                    + m.key.as_ref().map_or(0, Vec::len)
                            })
                            .sum();
                        metrics.read_bytes(bytes as u64);
                        live.read_to(b.messages.last().map(|m| m.offset + 1), reader.end_offset());
                        ReaderMsg::Batch(b)
                    }
                    ReadResult::Idle if caught_up => {
                        live.read_to(None, reader.end_offset());
                        continue;
                    }
                    ReadResult::Idle => {
                        live.read_to(None, reader.end_offset());
                        // A full channel means a backlog, which is not idleness: say it
                        // on the next empty read instead.
                        caught_up = tx.try_send(ReaderMsg::CaughtUp).is_ok();
                        continue;
                    }
                    ReadResult::End => ReaderMsg::End,
                };
                let end = matches!(msg, ReaderMsg::End);
                let sent = match tx.send_timeout(msg, PAUSE_AFTER) {
                    Ok(()) => true,
                    Err(SendTimeoutError::Disconnected(_)) => false,
                    Err(SendTimeoutError::Timeout(msg)) => {
                        reader.set_paused(true)?;
                        events::ReaderPaused {
                            partition,
                            paused: true,
                        }
                        .emit(&metrics);
                        let sent = send_until_stopped(&tx, msg, &stopped);
                        reader.set_paused(false)?;
                        events::ReaderPaused {
                            partition,
                            paused: false,
                        }
                        .emit(&metrics);
                        sent
                    }
                };
                if !sent || end {
                    break;
                }
            }
            Ok(())
        })
        .map_err(|e| WeirError::Internal(format!("spawn reader: {e}")))
}

/// Send, but give up when `stopped` says so (the receiver may be gone or stuck).
pub(super) fn send_until_stopped<T>(
    tx: &Sender<T>,
    mut msg: T,
    stopped: &dyn Fn() -> bool,
) -> bool {
    loop {
        match tx.send_timeout(msg, Duration::from_millis(100)) {
            Ok(()) => return true,
            Err(SendTimeoutError::Timeout(m)) => {
                if stopped() {
                    return false;
                }
                msg = m;
            }
            Err(SendTimeoutError::Disconnected(_)) => return false,
        }
    }
}
