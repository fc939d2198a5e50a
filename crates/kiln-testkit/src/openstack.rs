//! OpenStack's real Keystone and Glance (Debian's `python3-keystone` and
//! `python3-glance`, run from their Python modules with SQLite and a file
//! store), started on loopback for one test: Keystone bootstrapped with an
//! admin user, Glance behind Keystone's token middleware and registered in
//! Keystone's catalog as the `image` service of `RegionOne`. The state is
//! read back over Glance's API here, not with Kiln.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// Debian's Python, which has the OpenStack modules (a `python3` earlier
/// in PATH, such as pyenv's, may not).
pub const PYTHON: &str = "/usr/bin/python3";
pub const PASSWORD: &str = "kiln-test-password-never-shown";
pub const REGION: &str = "RegionOne";

pub struct OpenStack {
    dir: tempfile::TempDir,
    children: Vec<Child>,
    pub keystone_port: u16,
    pub glance_port: u16,
    token: String,
}

impl Drop for OpenStack {
    fn drop(&mut self) {
        for c in &mut self.children {
            // The servers run in their own process groups (Glance forks a
            // worker): the whole group goes.
            unsafe {
                libc::kill(-(c.id() as i32), libc::SIGKILL);
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn tail(p: &Path) -> String {
    let s = std::fs::read_to_string(p).unwrap_or_default();
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

const MISSING: &str = "OpenStack's Keystone and Glance are needed: apt-get install python3-keystone python3-glance (.ci/run does)";

fn python(args: &[&str], log: &Path) {
    let out = std::fs::File::create(log).unwrap();
    let st = Command::new(PYTHON)
        .args(args)
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .status()
        .expect(MISSING);
    assert!(st.success(), "{MISSING}\n{:?} failed:\n{}", args, tail(log));
}

fn spawn(args: &[&str], log: &Path) -> Child {
    use std::os::unix::process::CommandExt;
    let out = std::fs::File::create(log).unwrap();
    Command::new(PYTHON)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .process_group(0)
        .spawn()
        .expect(MISSING)
}

fn wait_port(port: u16, what: &str, log: &Path) {
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "{what} did not start:\n{}",
            tail(log)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into()
}

/// POSTs JSON with an optional token: (status, subject token, body).
fn post(url: &str, token: Option<&str>, body: &Value) -> (u16, Option<String>, Value) {
    let mut req = agent().post(url).header("Content-Type", "application/json");
    if let Some(t) = token {
        req = req.header("X-Auth-Token", t);
    }
    let mut r = req
        .send(serde_json::to_vec(body).unwrap().as_slice())
        .unwrap();
    let subject = r
        .headers()
        .get("x-subject-token")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let v = serde_json::from_slice(&r.body_mut().read_to_vec().unwrap_or_default())
        .unwrap_or(Value::Null);
    (r.status().as_u16(), subject, v)
}

impl OpenStack {
    /// Starts Keystone and Glance on free loopback ports (about 15 s).
    pub fn start() -> OpenStack {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let (kp, gp) = (free_port(), free_port());
        for s in [
            "fernet",
            "fernet-receipts",
            "credential",
            "images",
            "staging",
            "tasks",
        ] {
            std::fs::create_dir(d.join(s)).unwrap();
        }
        let p = |s: &str| d.join(s).display().to_string();
        std::fs::write(
            d.join("keystone.conf"),
            format!(
                "[DEFAULT]\nlog_file = {}\n[database]\nconnection = sqlite:///{}\n[token]\nprovider = fernet\n\
                 [fernet_tokens]\nkey_repository = {}\n[fernet_receipts]\nkey_repository = {}\n\
                 [credential]\nkey_repository = {}\n",
                p("keystone.log"),
                p("keystone.sqlite"),
                p("fernet"),
                p("fernet-receipts"),
                p("credential")
            ),
        )
        .unwrap();
        let kconf = p("keystone.conf");
        let manage = |args: &[&str], log: &str| {
            let mut a = vec![
                "-c",
                "import sys; from keystone.cmd.manage import main; sys.argv = ['keystone-manage'] + sys.argv[1:]; main()",
                "--config-file",
                &kconf,
            ];
            a.extend_from_slice(args);
            python(&a, &d.join(log));
        };
        manage(&["db_sync"], "db_sync.log");
        manage(
            &[
                "fernet_setup",
                "--keystone-user",
                "root",
                "--keystone-group",
                "root",
            ],
            "fernet.log",
        );
        manage(
            &[
                "credential_setup",
                "--keystone-user",
                "root",
                "--keystone-group",
                "root",
            ],
            "credential.log",
        );
        let auth_url = format!("http://127.0.0.1:{kp}/v3");
        manage(
            &[
                "bootstrap",
                "--bootstrap-password",
                PASSWORD,
                "--bootstrap-public-url",
                &auth_url,
                "--bootstrap-region-id",
                REGION,
            ],
            "bootstrap.log",
        );
        let mut os = OpenStack {
            children: Vec::new(),
            keystone_port: kp,
            glance_port: gp,
            token: String::new(),
            dir,
        };
        let d = os.dir.path().to_path_buf();
        let klog = d.join("keystone.out");
        os.children.push(spawn(
            &[
                "/usr/bin/keystone-wsgi-public",
                "--host",
                "127.0.0.1",
                "--port",
                &kp.to_string(),
                "--",
                "--config-file",
                &kconf,
            ],
            &klog,
        ));
        wait_port(kp, "Keystone", &klog);

        std::fs::write(
            d.join("glance-api-paste.ini"),
            "[pipeline:glance-api-keystone]\n\
             pipeline = versionnegotiation authtoken context rootapp\n\
             [composite:rootapp]\npaste.composite_factory = glance.api:root_app_factory\n/: apiversions\n/v2: apiv2app\n\
             [app:apiversions]\npaste.app_factory = glance.api.versions:create_resource\n\
             [app:apiv2app]\npaste.app_factory = glance.api.v2.router:API.factory\n\
             [filter:versionnegotiation]\npaste.filter_factory = glance.api.middleware.version_negotiation:VersionNegotiationFilter.factory\n\
             [filter:context]\npaste.filter_factory = glance.api.middleware.context:ContextMiddleware.factory\n\
             [filter:authtoken]\npaste.filter_factory = keystonemiddleware.auth_token:filter_factory\ndelay_auth_decision = true\n",
        )
        .unwrap();
        let p = |s: &str| d.join(s).display().to_string();
        std::fs::write(
            d.join("glance-api.conf"),
            format!(
                "[DEFAULT]\nbind_host = 127.0.0.1\nbind_port = {gp}\nworkers = 1\nlog_file = {}\nenabled_backends = fs:file\n\
                 [glance_store]\ndefault_backend = fs\n[fs]\nfilesystem_store_datadir = {}\n\
                 [os_glance_staging_store]\nfilesystem_store_datadir = {}\n[os_glance_tasks_store]\nfilesystem_store_datadir = {}\n\
                 [database]\nconnection = sqlite:///{}\n\
                 [paste_deploy]\nflavor = keystone\nconfig_file = {}\n\
                 [keystone_authtoken]\nwww_authenticate_uri = http://127.0.0.1:{kp}\nauth_url = http://127.0.0.1:{kp}\n\
                 auth_type = password\ninterface = public\nproject_domain_name = Default\nuser_domain_name = Default\n\
                 project_name = admin\nusername = admin\npassword = {PASSWORD}\n",
                p("glance.log"),
                p("images"),
                p("staging"),
                p("tasks"),
                p("glance.sqlite"),
                p("glance-api-paste.ini"),
            ),
        )
        .unwrap();
        let gconf = p("glance-api.conf");
        python(
            &[
                "-c",
                "import sys; from glance.cmd.manage import main; sys.argv = ['glance-manage'] + sys.argv[1:]; main()",
                "--config-file",
                &gconf,
                "db_sync",
            ],
            &d.join("glance-db_sync.log"),
        );
        let glog = d.join("glance.out");
        os.children.push(spawn(
            &[
                "-c",
                "import sys; from glance.cmd.api import main; sys.argv = ['glance-api'] + sys.argv[1:]; main()",
                "--config-file",
                &gconf,
            ],
            &glog,
        ));

        // The image service in Keystone's catalog.
        os.token = os.login("admin", PASSWORD).expect("the admin logs in");
        let (st, _, svc) = post(
            &format!("{auth_url}/services"),
            Some(&os.token),
            &json!({"service": {"type": "image", "name": "glance"}}),
        );
        assert_eq!(st, 201, "{svc}");
        let sid = svc["service"]["id"].as_str().unwrap().to_string();
        let (st, _, e) = post(
            &format!("{auth_url}/endpoints"),
            Some(&os.token),
            &json!({"endpoint": {
                "service_id": sid, "interface": "public", "region_id": REGION,
                "url": format!("http://127.0.0.1:{gp}"),
            }}),
        );
        assert_eq!(st, 201, "{e}");
        wait_port(gp, "Glance", &d.join("glance.log"));
        os
    }

    pub fn auth_url(&self) -> String {
        format!("http://127.0.0.1:{}/v3", self.keystone_port)
    }

    pub fn glance_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.glance_port)
    }

    /// A Keystone token for `user` of the project `admin`.
    pub fn login(&self, user: &str, password: &str) -> Option<String> {
        let (st, subject, _) = post(
            &format!("{}/auth/tokens", self.auth_url()),
            None,
            &json!({"auth": {
                "identity": {"methods": ["password"], "password": {"user": {
                    "name": user, "domain": {"name": "Default"}, "password": password}}},
                "scope": {"project": {"name": "admin", "domain": {"name": "Default"}}},
            }}),
        );
        if st != 201 {
            return None;
        }
        subject
    }

    /// Writes a `clouds.yaml` with the cloud `name` (the admin with
    /// `password`, in `region`) and returns its path.
    pub fn clouds_yaml(&self, dir: &Path, name: &str, password: &str, region: &str) -> PathBuf {
        let p = dir.join("clouds.yaml");
        std::fs::write(
            &p,
            format!(
                "# written by the test\nclouds:\n  {name}:\n    auth:\n      auth_url: http://127.0.0.1:{}\n      username: admin\n      password: \"{password}\"\n      project_name: admin\n      user_domain_name: Default\n      project_domain_name: Default\n    region_name: {region}\n    interface: public\n    identity_api_version: 3\n",
                self.keystone_port
            ),
        )
        .unwrap();
        p
    }

    fn get(&self, path: &str) -> Value {
        let mut r = agent()
            .get(format!("{}/v2/{path}", self.glance_url()))
            .header("X-Auth-Token", &self.token)
            .call()
            .unwrap();
        assert_eq!(r.status().as_u16(), 200, "GET {path}");
        serde_json::from_slice(&r.body_mut().read_to_vec().unwrap()).unwrap()
    }

    /// Every image Glance has (any status).
    pub fn images(&self) -> Vec<Value> {
        self.get("images?limit=1000")["images"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// The sha256 of an image's stored bytes, read back from Glance.
    pub fn image_sha256(&self, id: &str) -> String {
        use sha2::Digest;
        let mut r = agent()
            .get(format!("{}/v2/images/{id}/file", self.glance_url()))
            .header("X-Auth-Token", &self.token)
            .call()
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        let mut h = sha2::Sha256::new();
        std::io::copy(&mut r.body_mut().as_reader(), &mut h).unwrap();
        hex::encode(h.finalize())
    }

    /// Makes an image as another tool would: `properties` set, `data`
    /// uploaded (none: left queued, as a cut upload leaves one).
    pub fn make_image(&self, name: &str, properties: Value, data: Option<&[u8]>) -> String {
        let mut body = json!({"name": name, "disk_format": "raw", "container_format": "bare"});
        for (k, v) in properties.as_object().unwrap() {
            body[k] = v.clone();
        }
        let (st, _, v) = post(
            &format!("{}/v2/images", self.glance_url()),
            Some(&self.token),
            &body,
        );
        assert_eq!(st, 201, "{v}");
        let a = agent();
        let id = v["id"].as_str().unwrap().to_string();
        if let Some(data) = data {
            let r = a
                .put(format!("{}/v2/images/{id}/file", self.glance_url()))
                .header("X-Auth-Token", &self.token)
                .header("Content-Type", "application/octet-stream")
                .send(data)
                .unwrap();
            assert_eq!(r.status().as_u16(), 204);
        }
        id
    }

    /// Glance's log so far (for a failing test's message).
    pub fn log(&self) -> String {
        tail(&self.dir.path().join("glance.log"))
    }
}
