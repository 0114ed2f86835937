use std::time::{Duration, Instant};
fn main() {
    let url = std::env::args().nth(1).unwrap();
    let conc: usize = std::env::var("C")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    let batch: usize = std::env::var("B")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let secs: u64 = std::env::var("S")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(15);
    let ts: i64 = chrono::Utc::now().timestamp_millis() - 3_600_000;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let http = reqwest::Client::new();
        let start = Instant::now();
        let mut tasks = Vec::new();
        for c in 0..conc {
            let http = http.clone();
            let url = url.clone();
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::new();
                let mut n = 0u64;
                let mut seq = 0u64;
                while start.elapsed() < Duration::from_secs(secs) {
                    let mut body = String::with_capacity(batch * 700);
                    for i in 0..batch {
                        seq += 1;
                        let sub = (seq * 7919) % 1000;
                        use std::fmt::Write;
                        let _ = writeln!(body, r#"{{"version":"1.0","timestamp":{t},"transactionId":"c{c}-{seq}","environmentId":"env-1","type":"transactionSummary","transactionSummary":{{"status":"Success","statusDetail":"200","duration":42,"proxy":{{"id":"remoteApiId_pets","name":"pets","revision":1}},"entryPoint":{{"type":"http","method":"GET","path":"/v1/pets/7","host":"api.example.com"}},"quota":{{"id":"q{q}"}},"assetResource":{{"id":"ar-1","name":"weather/pets"}},"consumerDetails":{{"subscription":{{"id":"sub-{sub}","name":"s"}},"application":{{"id":"app-1","name":"app"}}}}}}}}"#, t = ts + (i as i64), q = sub % 2);
                    }
                    let t0 = Instant::now();
                    let r = http.post(&url).bearer_auth("tok").body(body).send().await.unwrap();
                    assert!(r.status().is_success(), "{}", r.status());
                    let _ = r.bytes().await;
                    lat.push(t0.elapsed());
                    n += batch as u64;
                }
                (n, lat)
            }));
        }
        let mut total = 0; let mut lat = Vec::new();
        for t in tasks { let (n, l) = t.await.unwrap(); total += n; lat.extend(l); }
        lat.sort();
        let el = start.elapsed().as_secs_f64();
        println!("{total} tx in {el:.1}s = {:.0} tx/s; batches {} p50 {:?} p99 {:?} max {:?}", total as f64 / el, lat.len(), lat[lat.len()/2], lat[lat.len()*99/100], lat.last().unwrap());
    });
}
