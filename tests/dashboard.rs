//! The dashboard in a real headless Chromium (Debian's `chromium`, driven by
//! playwright-core from tests/browser): log in, upload the demo file with
//! upload progress to 100%, watch the job finish live, download its rejects.

mod common;

use std::path::Path;
use std::process::Command;

use common::TestDb;
use common::server::{ADMIN_PW, Server};

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
    let r = common::run(
        Command::new("node")
            .arg(browser.join("dashboard.mjs"))
            .args([
                &s.base,
                "admin",
                ADMIN_PW,
                demo.to_str().unwrap(),
                out.to_str().unwrap(),
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
    assert_eq!(db.count("customer"), 995);
}
