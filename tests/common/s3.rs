//! A real S3 API server for tests: moto in server mode (PyPI, in the venv
//! scripts/test.sh makes), one per test, its buckets and objects handled
//! with boto3 (AWS's own client) from the same venv.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use super::Reaped;

const VENV: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/s3/.venv/bin");

pub struct Moto {
    _child: Reaped,
    pub endpoint: String,
}

impl Moto {
    pub fn start() -> Moto {
        let bin = format!("{VENV}/moto_server");
        assert!(
            Path::new(&bin).exists(),
            "{bin} is missing: scripts/test.sh makes tests/s3/.venv"
        );
        let mut child = Reaped(Some(
            Command::new(bin)
                .args(["-H", "127.0.0.1", "-p", "0"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("start moto_server"),
        ));
        let stderr = child.get().stderr.take().expect("piped");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(at) = line.find("Running on http://") {
                    let _ = tx.send(line[at + "Running on ".len()..].trim().to_string());
                }
            }
        });
        let endpoint = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("moto_server reports its address");
        Moto {
            _child: child,
            endpoint,
        }
    }

    /// What a nexus process needs to reach this server.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_ACCESS_KEY_ID", "test".into()),
            ("AWS_SECRET_ACCESS_KEY", "test".into()),
            ("AWS_REGION", "us-east-1".into()),
        ]
    }

    /// Runs `code` with `s3`, a boto3 client of this server, and `args`;
    /// returns what it prints.
    pub fn boto3(&self, code: &str, args: &[&str]) -> String {
        let script = format!(
            "import sys, boto3\ns3 = boto3.client('s3', endpoint_url='{}', aws_access_key_id='test', \
             aws_secret_access_key='test', region_name='us-east-1')\n{code}\n",
            self.endpoint
        );
        let out = Command::new(format!("{VENV}/python"))
            .arg("-c")
            .arg(script)
            .args(args)
            .output()
            .expect("run boto3");
        assert!(
            out.status.success(),
            "boto3: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn create_bucket(&self, bucket: &str) {
        self.boto3("s3.create_bucket(Bucket=sys.argv[1])", &[bucket]);
    }

    pub fn put(&self, bucket: &str, key: &str, file: &Path) {
        self.boto3(
            "s3.upload_file(sys.argv[3], sys.argv[1], sys.argv[2])",
            &[bucket, key, &file.to_string_lossy()],
        );
    }

    /// The keys in the bucket, and how many multipart uploads are open.
    pub fn keys(&self, bucket: &str) -> (Vec<String>, usize) {
        let out = self.boto3(
            "for o in s3.list_objects_v2(Bucket=sys.argv[1]).get('Contents', []): print(o['Key'])\n\
             print(len(s3.list_multipart_uploads(Bucket=sys.argv[1]).get('Uploads', [])))",
            &[bucket],
        );
        let mut lines: Vec<String> = out.lines().map(str::to_string).collect();
        let open = lines.pop().and_then(|n| n.parse().ok()).expect("a count");
        (lines, open)
    }
}
