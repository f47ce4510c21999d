//! Route lookup and config compile benchmarks.
//!
//! `find/<request>/<routes>`: one `RouteTable::find` for each kind of request (see
//! `benches::requests`) on tables of 10, 1,000 and 10,000 routes.
//! `config_10k/parse` and `config_10k/compile`: `config::parse` and `runtime::compile`
//! of the 10,000-route config, measured separately.

// Benchmarks are test code: a fixture that does not build should stop the run loudly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use benches::{requests, routes_yaml};
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use gateway::config;
use gateway::runtime::{self, Runtime};

const SIZES: [usize; 3] = [10, 1_000, 10_000];

fn build(n: usize) -> Runtime {
    let spec = config::parse(&routes_yaml(n), "bench.yaml")
        .unwrap_or_else(|e| panic!("routes_yaml({n}) does not parse:\n{e}"));
    runtime::compile(&spec, 1, None).expect("generated config compiles")
}

fn find(c: &mut Criterion) {
    let mut group = c.benchmark_group("find");
    for n in SIZES {
        let runtime = build(n);
        let table = &runtime.table;
        for fixture in requests(n) {
            let view = fixture.request.view();
            // A benchmark of the wrong route is worse than none.
            let got = table.find(&view).map(|h| &*runtime.routes[h.route].id);
            assert_eq!(got, fixture.expect.as_deref(), "n={n} {}", fixture.name);
            group.bench_with_input(BenchmarkId::new(fixture.name, n), &view, |b, view| {
                b.iter(|| table.find(black_box(view)));
            });
        }
    }
    group.finish();
}

fn compile_10k(c: &mut Criterion) {
    let yaml = routes_yaml(10_000);
    let spec = config::parse(&yaml, "bench.yaml").expect("generated config parses");
    let mut group = c.benchmark_group("config_10k");
    // One iteration takes tens of milliseconds; 10 samples keep the run short.
    group.sample_size(10);
    // Freeing the result is not part of parsing or compiling: keep it out of the time.
    group.bench_function("parse", |b| {
        b.iter_with_large_drop(|| config::parse(black_box(&yaml), "bench.yaml").expect("parses"));
    });
    group.bench_function("compile", |b| {
        b.iter_with_large_drop(|| runtime::compile(black_box(&spec), 1, None).expect("compiles"));
    });
    group.finish();
}

criterion_group!(benches, find, compile_10k);
criterion_main!(benches);
