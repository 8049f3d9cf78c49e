//! The dashboard in a real headless Chromium (Debian's `chromium`, driven by
//! playwright-core from tests/browser): log in, upload the demo file with
//! upload progress to 100%, watch the job finish live, download its rejects.

mod common;

use std::path::Path;
use std::process::Command;

use common::server::{ADMIN_PW, Server};
use common::{TestDb, customers};

#[test]
fn a_whole_upload_in_the_browser() {
    let db = TestDb::new();
    let s = Server::start(&db, &[]);
    let browser = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    assert!(
        browser.join("node_modules/playwright-core").is_dir(),
        "run `npm install --prefix tests/browser` (scripts/test.sh does)"
    );
    let out = db.dir.path();
    let demo = common::fixture("customers.csv");
    // Latin-1 bytes: é is 0xE9.
    let mut latin1 =
        b"id,external_id,name,email,country,segment,credit_limit,created_at,active,score\n"
            .to_vec();
    for i in 1..=12u32 {
        latin1.extend_from_slice(
            format!("{},{},Ren", 5000 + i, uuid::Uuid::from_u128(i.into())).as_bytes(),
        );
        latin1.push(0xE9);
        latin1.extend_from_slice(
            format!(",r{i}@example.com,FR,smb,1.00,2021-01-01T00:00:00Z,true,{i}\n").as_bytes(),
        );
    }
    let latin1_file = db.file("latin1.csv", &latin1);
    // Every row refused: a score that is not a number.
    let all_bad: String = customers(7000, 40)
        .replace(",true,", ",true,x")
        .replace(",false,", ",false,x");
    let all_bad_file = db.file("all-bad.csv", all_bad);
    let big_file = db.file("big.csv", customers(100_000, 300_000));
    let r = common::run(
        Command::new("node")
            .arg(browser.join("dashboard.mjs"))
            .args([
                &s.base,
                "admin",
                ADMIN_PW,
                demo.to_str().unwrap(),
                out.to_str().unwrap(),
                latin1_file.to_str().unwrap(),
                all_bad_file.to_str().unwrap(),
                big_file.to_str().unwrap(),
            ]),
    );
    println!("{}", r.stdout);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert!(
        r.stdout
            .contains("job succeeded: 995 committed, 5 rejected, bar 100%"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("upload: uploaded 100%"));
    assert!(r.stdout.contains("rejects download: rejects-"));
    assert!(out.join("dashboard.png").exists());
    // The README's pictures: `NEXUS_SCREENSHOTS=docs/screenshots cargo test --test dashboard`.
    if let Ok(keep) = std::env::var("NEXUS_SCREENSHOTS") {
        std::fs::create_dir_all(&keep).unwrap();
        for shot in ["job-running.png", "job-failed.png"] {
            std::fs::copy(out.join(shot), Path::new(&keep).join(shot)).unwrap();
        }
    }
    assert!(
        r.stdout.contains("latin1 upload: succeeded, 12 committed"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("all rejected: failed: no row was loaded"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout
            .contains("job page: rejects grouped, 40 in the largest group"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("throughput chart: "), "{}", r.stdout);
    assert!(r.stdout.contains("at 420 px"), "{}", r.stdout);
    assert_eq!(
        db.value("SELECT name FROM customer WHERE id = 5003")
            .as_deref(),
        Some("René")
    );
    assert_eq!(db.count("customer"), 995 + 12 + 300_000);
}
