//! Offset tracking: register and resolve ranges out of order.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use weir_runtime::OffsetTracker;

fn offsets(c: &mut Criterion) {
    let mut g = c.benchmark_group("offset_tracker");
    g.throughput(Throughput::Elements(10_000));
    g.bench_function("register_resolve_10k_ranges_reversed_in_blocks_of_8", |b| {
        b.iter(|| {
            let mut t = OffsetTracker::new(0);
            for block in 0..1_250i64 {
                for i in 0..8 {
                    let first = (block * 8 + i) * 100;
                    t.register(first, first + 99);
                }
                for i in (0..8).rev() {
                    t.resolve((block * 8 + i) * 100);
                }
            }
            t.committable()
        })
    });
    g.finish();
}

criterion_group!(benches, offsets);
criterion_main!(benches);
