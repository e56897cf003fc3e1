//! A real PostgreSQL server for the tests: Debian's binaries (the newest
//! `/usr/lib/postgresql/*/bin`), `initdb` and `pg_ctl` in a temporary
//! directory as an unprivileged user (`initdb` refuses root), listening on
//! 127.0.0.1 with a free port and on a Unix socket in that directory,
//! password authentication only (`scram-sha-256`) and TLS with a CA made
//! for the run.
//!
//! One server per test binary run, started by the first test that asks and
//! shared by all; each test gets its own database ([`Postgres::database`]).
//! A watcher process started with the server stops it (`pg_ctl stop -m
//! immediate`) and removes its directory as soon as the test binary is gone,
//! however it ends: a panic, a normal exit (statics are never dropped) or a
//! kill.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

/// The role the daemon connects as, and its password.
pub const ROLE: &str = "tokend";
pub const ROLE_PASSWORD: &str = "pw-role-4c1d9e";

/// The superuser the harness itself uses (over the Unix socket).
const ADMIN: &str = "admin";
const ADMIN_PASSWORD: &str = "pw-admin-77ab02";

/// The user the server runs as: `initdb` refuses root.
const SERVER_UID: u32 = 65534;
const SERVER_GID: u32 = 65534;

/// The shared server.
pub struct Postgres {
    /// The directory of its Unix socket.
    pub socket_dir: PathBuf,
    /// Its TCP port on 127.0.0.1.
    pub port: u16,
    /// The CA that signed the server's certificate (PEM).
    pub ca: PathBuf,
    /// Another CA, which signed nothing the server presents.
    pub wrong_ca: PathBuf,
    bin: PathBuf,
}

/// The server, started on first use.
pub fn server() -> &'static Postgres {
    static SERVER: OnceLock<Postgres> = OnceLock::new();
    SERVER.get_or_init(Postgres::start)
}

impl Postgres {
    fn start() -> Postgres {
        let bin = newest_bin();
        let dir = tempfile::Builder::new()
            .prefix("tokend-pg-")
            .tempdir()
            .expect("tempdir")
            .keep();
        chown(&dir);
        let socket_dir = dir.join("sock");
        let data = dir.join("data");
        std::fs::create_dir(&socket_dir).expect("socket dir");
        chown(&socket_dir);
        let pwfile = dir.join("admin-password");
        std::fs::write(&pwfile, ADMIN_PASSWORD).expect("pwfile");
        chown(&pwfile);
        let (ca, wrong_ca) = make_tls(&dir);
        run_as_server(
            Command::new(bin.join("initdb"))
                .arg("-D")
                .arg(&data)
                .args(["-U", ADMIN, "--auth=scram-sha-256", "-E", "UTF8"])
                .arg(format!("--pwfile={}", pwfile.display()))
                .arg("--no-sync"),
            "initdb",
        );
        // Password authentication only, over the socket and loopback TCP.
        std::fs::write(
            data.join("pg_hba.conf"),
            "local all all scram-sha-256\n\
             host all all 127.0.0.1/32 scram-sha-256\n\
             host all all ::1/128 scram-sha-256\n",
        )
        .expect("pg_hba.conf");
        let mut started = None;
        for _ in 0..5 {
            let port = free_port();
            let options = format!(
                "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off \
                 -c ssl=on -c ssl_cert_file={} -c ssl_key_file={} -c max_connections=200",
                socket_dir.display(),
                dir.join("tls/server.crt").display(),
                dir.join("tls/server.key").display(),
            );
            let ok = Command::new("setpriv")
                .args(server_ids())
                .arg(bin.join("pg_ctl"))
                .arg("-D")
                .arg(&data)
                .arg("-l")
                .arg(dir.join("server.log"))
                .args(["-w", "-t", "60", "-o", &options, "start"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .status()
                .expect("setpriv (util-linux) must be installed")
                .success();
            if ok {
                started = Some(port);
                break;
            }
        }
        let port = started.unwrap_or_else(|| {
            panic!(
                "pg_ctl start failed: {}",
                std::fs::read_to_string(dir.join("server.log")).unwrap_or_default()
            )
        });
        watch(&bin, &dir, &data);
        let pg = Postgres {
            socket_dir,
            port,
            ca,
            wrong_ca,
            bin,
        };
        pg.admin_sql(
            "postgres",
            &format!("CREATE ROLE {ROLE} LOGIN PASSWORD '{ROLE_PASSWORD}'"),
        );
        pg
    }

    /// A new, empty database owned by [`ROLE`], for one test; returns its
    /// name.
    pub fn database(&self) -> String {
        static NEXT: AtomicU32 = AtomicU32::new(1);
        let name = format!(
            "t{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        self.admin_sql("postgres", &format!("CREATE DATABASE {name} OWNER {ROLE}"));
        name
    }

    /// Runs `sql` as the superuser in `db` through `psql` and returns its
    /// output (unaligned, tuples only); panics if psql fails.
    pub fn admin_sql(&self, db: &str, sql: &str) -> String {
        let out = Command::new(self.bin.join("psql"))
            .arg("-h")
            .arg(&self.socket_dir)
            .args(["-p", &self.port.to_string(), "-U", ADMIN, "-d", db])
            .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .env("PGPASSWORD", ADMIN_PASSWORD)
            .stdin(Stdio::null())
            .output()
            .expect("run psql");
        assert!(
            out.status.success(),
            "psql {sql:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Starts `psql` running `sql` as the superuser in `db`, without
    /// waiting for it (its session lasts until it exits).
    pub fn admin_command(&self, db: &str, sql: &str) -> std::process::Child {
        Command::new(self.bin.join("psql"))
            .arg("-h")
            .arg(&self.socket_dir)
            .args(["-p", &self.port.to_string(), "-U", ADMIN, "-d", db])
            .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .env("PGPASSWORD", ADMIN_PASSWORD)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run psql")
    }

    /// The URL of `db` on loopback TCP as [`ROLE`], with `query` (e.g.
    /// `sslmode=disable`) when not empty.
    pub fn tcp_url(&self, db: &str, query: &str) -> String {
        let mut url = format!("postgres://{ROLE}@127.0.0.1:{}/{db}", self.port);
        if !query.is_empty() {
            url.push('?');
            url.push_str(query);
        }
        url
    }

    /// The URL of `db` through the Unix socket directory as [`ROLE`].
    pub fn socket_url(&self, db: &str) -> String {
        format!(
            "postgres://{ROLE}@localhost:{}/{db}?host={}",
            self.port,
            self.socket_dir.display()
        )
    }
}

/// The newest installed server's binaries, or a panic saying what to install.
fn newest_bin() -> PathBuf {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    found.sort();
    match found.pop() {
        Some((_, bin)) => bin,
        None => panic!(
            "the PostgreSQL tests need a PostgreSQL server: install Debian's `postgresql` \
             package (`apt-get install postgresql`; .ci/run does) so that \
             /usr/lib/postgresql/<version>/bin/initdb exists"
        ),
    }
}

fn server_ids() -> [String; 3] {
    [
        format!("--reuid={SERVER_UID}"),
        format!("--regid={SERVER_GID}"),
        "--clear-groups".into(),
    ]
}

/// Runs `cmd` as the server's user, panicking with its output if it fails.
fn run_as_server(cmd: &mut Command, what: &str) {
    let program = cmd.get_program().to_owned();
    let args: Vec<_> = cmd.get_args().map(|a| a.to_owned()).collect();
    let out = Command::new("setpriv")
        .args(server_ids())
        .arg(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("setpriv (util-linux) must be installed");
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn chown(path: &Path) {
    std::os::unix::fs::chown(path, Some(SERVER_UID), Some(SERVER_GID)).expect("chown");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// A CA, a server certificate it signed for `localhost` and 127.0.0.1, and
/// a second, unrelated CA. Returns the two CA certificates.
fn make_tls(dir: &Path) -> (PathBuf, PathBuf) {
    let tls = dir.join("tls");
    std::fs::create_dir(&tls).expect("tls dir");
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(&tls)
            .stdin(Stdio::null())
            .output()
            .expect("openssl must be installed");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    for ca in ["ca", "wrong-ca"] {
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &format!("{ca}.key"),
            "-out",
            &format!("{ca}.crt"),
            "-days",
            "2",
            "-subj",
            &format!("/CN=tokend test {ca}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ]);
    }
    openssl(&[
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=localhost",
    ]);
    std::fs::write(
        tls.join("server.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n\
         basicConstraints=critical,CA:FALSE\n\
         keyUsage=critical,digitalSignature\n\
         extendedKeyUsage=serverAuth\n",
    )
    .expect("server.ext");
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.crt",
        "-days",
        "2",
        "-extfile",
        "server.ext",
    ]);
    // The server refuses a key others can read.
    use std::os::unix::fs::PermissionsExt;
    for file in ["server.key", "server.crt"] {
        let path = tls.join(file);
        chown(&path);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    }
    (tls.join("ca.crt"), tls.join("wrong-ca.crt"))
}

/// Starts a process that waits for this test binary to end, then stops the
/// server and removes its directory. It runs in its own session, so a
/// Ctrl-C or a kill of the test run's process group does not take it down
/// before it has cleaned up.
fn watch(bin: &Path, dir: &Path, data: &Path) {
    let script = format!(
        "while kill -0 {pid} 2>/dev/null; do sleep 0.5; done; \
         setpriv --reuid={SERVER_UID} --regid={SERVER_GID} --clear-groups \
           {pg_ctl} -D {data} -m immediate stop >/dev/null 2>&1; \
         rm -rf {dir}",
        pid = std::process::id(),
        pg_ctl = bin.join("pg_ctl").display(),
        data = data.display(),
        dir = dir.display(),
    );
    // `--fork`: setsid returns at once, leaving the watcher in its own
    // session; waiting for setsid reaps it.
    let started = Command::new("setsid")
        .args(["--fork", "sh", "-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("spawn the server's watcher (setsid, util-linux)");
    assert!(started.success(), "setsid --fork failed: {started}");
}
