//! The catalog: every image version Kiln built or imported, what is in it
//! (packages, artifacts, SBOM and provenance digests) and where it is.
//!
//! It is an index, never the only copy of the truth: each entry is read
//! from a build's `manifest.json` (whose sha256 is the entry's identity),
//! and `kiln catalog import` rebuilds it from build outputs. The embedded
//! store is one SQLite file (default `$XDG_DATA_HOME/kiln/catalog.sqlite`);
//! its schema is versioned, and a file with a newer schema, or one that is
//! not a Kiln catalog, is refused and left as it is. Each record is one
//! transaction: a failure leaves no partial entry.

use std::path::{Path, PathBuf};
use std::time::Duration;

mod db;

use db::{args, Conn, DbError, Dialect, V};
use kiln_model::Manifest;
use serde::Serialize;

/// The schema this Kiln writes and reads.
pub const SCHEMA_VERSION: i64 = 7;

/// Each migration takes the schema from its index to the next version.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE image (
    id INTEGER PRIMARY KEY,
    manifest_sha256 TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    version TEXT,
    suite TEXT NOT NULL,
    architectures TEXT NOT NULL,
    distroless INTEGER NOT NULL,
    source_date_epoch INTEGER NOT NULL,
    recipe_sha256 TEXT NOT NULL,
    generator TEXT NOT NULL,
    location TEXT NOT NULL,
    recorded_at INTEGER NOT NULL
);
CREATE INDEX image_name ON image(name);
CREATE TABLE package (
    image_id INTEGER NOT NULL REFERENCES image(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    version TEXT NOT NULL,
    architecture TEXT NOT NULL,
    target TEXT NOT NULL,
    source TEXT NOT NULL,
    source_version TEXT NOT NULL,
    sha256 TEXT NOT NULL
);
CREATE INDEX package_name ON package(name);
CREATE INDEX package_image ON package(image_id);
CREATE TABLE artifact (
    image_id INTEGER NOT NULL REFERENCES image(id) ON DELETE CASCADE,
    kind TEXT NOT NULL,
    path TEXT NOT NULL,
    architecture TEXT,
    size INTEGER NOT NULL,
    sha256 TEXT NOT NULL
);
CREATE INDEX artifact_image ON artifact(image_id);
"#,
    r#"
CREATE TABLE test_run (
    image_id INTEGER NOT NULL REFERENCES image(id) ON DELETE CASCADE,
    artifact TEXT NOT NULL,
    passed INTEGER NOT NULL,
    seconds REAL NOT NULL,
    report TEXT NOT NULL,
    at INTEGER NOT NULL
);
CREATE INDEX test_run_image ON test_run(image_id);
"#,
    r#"
CREATE TABLE publication (
    id INTEGER PRIMARY KEY,
    image_id INTEGER NOT NULL REFERENCES image(id) ON DELETE CASCADE,
    target TEXT NOT NULL,
    kind TEXT NOT NULL,
    location TEXT NOT NULL,
    digest TEXT,
    channel TEXT,
    published_at INTEGER NOT NULL,
    UNIQUE (image_id, target, location)
);
CREATE INDEX publication_image ON publication(image_id);
"#,
    // `kiln find --package` reads a package's versions from the index alone
    // (the table's rows are scattered: one page read per image before).
    r#"
CREATE INDEX package_name_image ON package(name, image_id, version, target);
DROP INDEX package_name;
CREATE INDEX publication_channel ON publication(channel);
"#,
    // `kiln watch`: the last pass's finding per image version, and every
    // rebuild it made (keyed by manifest digests: a version a rebuild failed
    // to produce has none in `image`).
    r#"
CREATE TABLE watch_state (
    manifest_sha256 TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    updates INTEGER NOT NULL,
    security INTEGER NOT NULL,
    cves TEXT NOT NULL,
    detail TEXT NOT NULL,
    checked_at INTEGER NOT NULL
);
CREATE TABLE rebuild (
    id INTEGER PRIMARY KEY,
    image TEXT NOT NULL,
    from_manifest TEXT,
    to_manifest TEXT,
    outcome TEXT NOT NULL,
    packages TEXT NOT NULL,
    cves TEXT NOT NULL,
    release_date INTEGER,
    output TEXT NOT NULL,
    error TEXT,
    started_at INTEGER NOT NULL,
    finished_at INTEGER NOT NULL,
    published_at INTEGER
);
CREATE INDEX rebuild_image ON rebuild(image);
CREATE INDEX rebuild_to ON rebuild(to_manifest);
"#,
    // `kiln release`: the staged rollout of each update channel, as last
    // signed (a release's share is computed from these when read).
    r#"
CREATE TABLE rollout (
    tree TEXT NOT NULL,
    channel TEXT NOT NULL,
    image TEXT NOT NULL,
    version TEXT NOT NULL,
    since INTEGER NOT NULL,
    start_bp INTEGER NOT NULL,
    duration INTEGER NOT NULL,
    paused INTEGER NOT NULL,
    barrier INTEGER NOT NULL,
    recorded_at INTEGER NOT NULL,
    PRIMARY KEY (tree, channel, image, version)
);
"#,
    // Cloud images (`kiln publish --to aws://…`): one row per region, the
    // provider in `kind`, the image id in `location`.
    r#"
ALTER TABLE publication ADD COLUMN region TEXT;
CREATE INDEX publication_region ON publication(kind, region);
"#,
];

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("the catalog {path}: {message}")]
    Refused {
        path: PathBuf,
        message: String,
        hint: String,
    },
    #[error("the catalog {path}: {source}")]
    Db {
        path: PathBuf,
        #[source]
        source: DbError,
    },
    #[error("{path}: {message}")]
    Input { path: PathBuf, message: String },
    #[error("bad package query `{0}`: give NAME or NAME OP VERSION with OP one of << <= = >= >>")]
    Query(String),
}

impl CatalogError {
    pub fn hint(&self) -> Option<String> {
        match self {
            CatalogError::Refused { hint, .. } => Some(hint.clone()),
            CatalogError::Db { .. } => {
                Some("`kiln catalog import DIR` rebuilds a catalog from build outputs".into())
            }
            CatalogError::Query(_) => Some("e.g. --package 'openssl<<3.5.4'".into()),
            CatalogError::Input { .. } => None,
        }
    }
}

/// Where the catalog is: `--catalog`, else `$KILN_CATALOG`, else the
/// user's data directory.
pub fn default_path() -> PathBuf {
    let data = std::env::var_os("XDG_DATA_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."));
    data.join("kiln/catalog.sqlite")
}

pub struct Catalog {
    /// A cell: reads take `&self` (the PostgreSQL client needs `&mut` for
    /// every statement).
    conn: std::cell::RefCell<Conn>,
    path: PathBuf,
}

/// Said once per process when another writer holds the catalog.
fn busy(count: i32) -> bool {
    if count == 0 {
        eprintln!("waiting for the catalog: another kiln process is writing it");
    }
    std::thread::sleep(Duration::from_millis(50));
    // About 60 s.
    count < 1200
}

/// Whether `--catalog` names a PostgreSQL server rather than a file.
pub fn is_url(location: &Path) -> bool {
    location
        .to_str()
        .is_some_and(|s| s.starts_with("postgres://") || s.starts_with("postgresql://"))
}

/// `postgres://user:secret@host/db` as `postgres://user:***@host/db`, for
/// messages.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    match rest.split_once('@') {
        Some((auth, host)) => match auth.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

impl Catalog {
    /// Opens (creating, or migrating to [`SCHEMA_VERSION`]) the catalog at
    /// `path`: an SQLite file, or a PostgreSQL database when `path` is a
    /// `postgres://` URL. Refuses, and leaves untouched, a database that is
    /// not a Kiln catalog or has a newer schema.
    pub fn open(path: &Path) -> Result<Catalog, CatalogError> {
        if is_url(path) {
            return Self::open_postgres(path.to_str().unwrap_or_default());
        }
        let db = db_err(path);
        let refused = |message: String, hint: &str| CatalogError::Refused {
            path: path.to_path_buf(),
            message,
            hint: hint.to_string(),
        };
        if let Some(bytes) = file_head(path) {
            if !bytes.is_empty() && bytes != b"SQLite format 3\0" {
                return Err(refused(
                    "is not a Kiln catalog (not an SQLite database); it was left as it is".into(),
                    "give another --catalog path, or move the file away: `kiln catalog import DIR` rebuilds a catalog",
                ));
            }
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| CatalogError::Input {
                path: dir.to_path_buf(),
                message: format!("cannot create the catalog's directory: {e}"),
            })?;
        }
        let mut conn = rusqlite::Connection::open(path).map_err(|e| db(e.into()))?;
        conn.busy_handler(Some(busy)).map_err(|e| db(e.into()))?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(|e| db(e.into()))?;
        let mut c = Catalog {
            conn: std::cell::RefCell::new(Conn::Sqlite(conn)),
            path: path.to_path_buf(),
        };
        c.migrate()?;
        Ok(c)
    }

    /// Opens the catalog at `path` for reading only (`kiln serve` by a user
    /// who may not write it): nothing is created or migrated, so the
    /// catalog must exist with this Kiln's schema.
    pub fn open_read_only(path: &Path) -> Result<Catalog, CatalogError> {
        let c = if is_url(path) {
            Self::connect_postgres(path.to_str().unwrap_or_default())?
        } else {
            let db = db_err(path);
            match file_head(path) {
                None => {
                    return Err(CatalogError::Refused {
                        path: path.to_path_buf(),
                        message: "does not exist (yet)".into(),
                        hint: "a kiln build or `kiln catalog import DIR` creates it".into(),
                    })
                }
                Some(h) if h != b"SQLite format 3\0" => {
                    return Err(CatalogError::Refused {
                        path: path.to_path_buf(),
                        message: "is not a Kiln catalog (not an SQLite database)".into(),
                        hint: "give the --catalog that kiln build writes".into(),
                    })
                }
                Some(_) => {}
            }
            let mut conn = rusqlite::Connection::open_with_flags(
                path,
                rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY
                    | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )
            .map_err(|e| db(e.into()))?;
            conn.busy_handler(Some(busy)).map_err(|e| db(e.into()))?;
            Catalog {
                conn: std::cell::RefCell::new(Conn::Sqlite(conn)),
                path: path.to_path_buf(),
            }
        };
        let version = {
            let mut conn = c.conn.borrow_mut();
            let tables = conn.tables().map_err(db_err(&c.path))?;
            if tables.iter().any(|t| t == "kiln_catalog") {
                conn.query_one(
                    "SELECT value FROM kiln_catalog WHERE key = 'schema-version'",
                    &[],
                )
                .map_err(db_err(&c.path))?
                .and_then(|r| r.t(0).parse::<i64>().ok())
            } else {
                None
            }
        };
        match version {
            Some(SCHEMA_VERSION) => Ok(c),
            Some(v) => Err(CatalogError::Refused {
                path: c.path.clone(),
                message: format!("has schema version {v}, this kiln reads {SCHEMA_VERSION}"),
                hint: if v < SCHEMA_VERSION {
                    "run a kiln command that writes it once (kiln catalog import DIR) to migrate it"
                        .into()
                } else {
                    "use the kiln that wrote it (or a newer one)".into()
                },
            }),
            None => Err(CatalogError::Refused {
                path: c.path.clone(),
                message: "is not a Kiln catalog".into(),
                hint: "give the --catalog that kiln build writes".into(),
            }),
        }
    }

    /// Every package of the image version whose `manifest.json` has this
    /// sha256, by name (empty when the catalog does not know it).
    pub fn packages(&self, manifest_sha256: &str) -> Result<Vec<FoundPackage>, CatalogError> {
        let rows = self
            .conn
            .borrow_mut()
            .query(
                "SELECT p.name, p.version, p.target FROM package p JOIN image i ON i.id = p.image_id \
                 WHERE i.manifest_sha256 = ?1 ORDER BY p.name, p.target",
                args![manifest_sha256],
            )
            .map_err(db_err(&self.path))?;
        Ok(rows
            .iter()
            .map(|r| FoundPackage {
                name: r.t(0),
                version: r.t(1),
                architecture: r.t(2),
            })
            .collect())
    }

    /// What the catalog's image versions can be searched by: every suite,
    /// architecture, artifact format and channel, with counts, for the
    /// finder's suggestions (without listing every version).
    pub fn facets(&self) -> Result<Facets, CatalogError> {
        let db = db_err(&self.path);
        let mut conn = self.conn.borrow_mut();
        let mut column = |sql: &str| -> Result<Vec<String>, CatalogError> {
            Ok(conn
                .query(sql, &[])
                .map_err(db)?
                .iter()
                .map(|r| r.t(0))
                .collect())
        };
        let suites = column("SELECT DISTINCT suite FROM image ORDER BY suite")?;
        let mut architectures: Vec<String> = column("SELECT DISTINCT architectures FROM image")?
            .iter()
            .flat_map(|a| a.split(' ').map(str::to_string))
            .filter(|a| !a.is_empty())
            .collect();
        architectures.sort();
        architectures.dedup();
        let formats = column(
            "SELECT DISTINCT kind FROM artifact \
             WHERE kind NOT IN ('spdx', 'cyclonedx', 'provenance') ORDER BY kind",
        )?;
        let channels = column(
            "SELECT DISTINCT channel FROM publication WHERE channel IS NOT NULL ORDER BY channel",
        )?;
        let regions = column(
            "SELECT DISTINCT region FROM publication WHERE region IS NOT NULL ORDER BY region",
        )?;
        let counts = conn
            .query_one("SELECT COUNT(DISTINCT name), COUNT(*) FROM image", &[])
            .map_err(db)?
            .map(|r| (r.i(0), r.i(1)))
            .unwrap_or((0, 0));
        Ok(Facets {
            images: counts.0 as u64,
            versions: counts.1 as u64,
            suites,
            architectures,
            formats,
            channels,
            regions,
        })
    }

    fn connect_postgres(url: &str) -> Result<Catalog, CatalogError> {
        let shown = PathBuf::from(redact(url));
        let client = postgres::Client::connect(url, postgres::NoTls).map_err(|e| {
            CatalogError::Refused {
                path: shown.clone(),
                message: format!("cannot connect: {}", db::DbError::from(e)),
                hint: "check the server is running and the URL (postgres://USER:PASSWORD@HOST:PORT/DATABASE); \
                       the database must exist (createdb)"
                    .into(),
            }
        })?;
        Ok(Catalog {
            conn: std::cell::RefCell::new(Conn::Postgres(Box::new(db::Pg::new(client)))),
            path: shown,
        })
    }

    fn open_postgres(url: &str) -> Result<Catalog, CatalogError> {
        let mut c = Self::connect_postgres(url)?;
        c.migrate()?;
        Ok(c)
    }

    /// The catalog's file, or its server's URL without the password.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `sqlite` or `postgres`.
    pub fn backend(&self) -> &'static str {
        match self.conn.borrow().dialect() {
            Dialect::Sqlite => "sqlite",
            Dialect::Postgres => "postgres",
        }
    }

    /// Runs `f` in one write transaction: all of it or nothing.
    fn write<T>(
        &mut self,
        f: impl FnOnce(&mut Conn) -> Result<T, CatalogError>,
    ) -> Result<T, CatalogError> {
        let db = db_err(&self.path);
        let conn = self.conn.get_mut();
        conn.begin().map_err(db)?;
        match f(conn) {
            Ok(v) => {
                conn.commit().map_err(db)?;
                Ok(v)
            }
            Err(e) => {
                conn.rollback();
                Err(e)
            }
        }
    }

    fn migrate(&mut self) -> Result<(), CatalogError> {
        let path = self.path.clone();
        let db = db_err(&path);
        self.write(|conn| {
            let dialect = conn.dialect();
            let tables = conn.tables().map_err(db)?;
            let version: i64 = if tables.iter().any(|t| t == "kiln_catalog") {
                conn.query_one(
                    "SELECT value FROM kiln_catalog WHERE key = 'schema-version'",
                    &[],
                )
                .map_err(db)?
                .and_then(|r| r.t(0).parse().ok())
                .unwrap_or(0)
            } else if tables.is_empty() {
                conn.batch(
                    "CREATE TABLE kiln_catalog (key TEXT PRIMARY KEY, value TEXT NOT NULL);\
                     INSERT INTO kiln_catalog VALUES ('schema-version', '0');",
                )
                .map_err(db)?;
                0
            } else {
                return Err(CatalogError::Refused {
                    path: path.clone(),
                    message: format!(
                        "is a database with other tables, not a Kiln catalog; it was left as it is ({})",
                        if dialect == Dialect::Sqlite {
                            "an SQLite file"
                        } else {
                            "give Kiln a database of its own"
                        }
                    ),
                    hint: "give another --catalog path or database".into(),
                });
            };
            if version > SCHEMA_VERSION {
                return Err(CatalogError::Refused {
                    path: path.clone(),
                    message: format!(
                        "has schema version {version}, newer than this kiln's {SCHEMA_VERSION}; it was left as it is"
                    ),
                    hint: "use the kiln that wrote it (or a newer one)".into(),
                });
            }
            for (i, m) in MIGRATIONS.iter().enumerate().skip(version as usize) {
                conn.batch(&db::ddl(m, dialect)).map_err(db)?;
                conn.exec(
                    "UPDATE kiln_catalog SET value = ?1 WHERE key = 'schema-version'",
                    args![(i as i64 + 1).to_string()],
                )
                .map_err(db)?;
            }
            Ok(())
        })
    }

    /// Records the build in `dir` (its `manifest.json`, artifacts, SBOMs and
    /// provenance) in one transaction. Recording the same build again
    /// updates where it is; returns whether it was new.
    pub fn record_build(&mut self, dir: &Path) -> Result<bool, CatalogError> {
        self.record(dir).map(|(_, new)| new)
    }

    /// [`Catalog::record_build`], returning the entry's id too.
    fn record(&mut self, dir: &Path) -> Result<(i64, bool), CatalogError> {
        let input = |message: String| CatalogError::Input {
            path: dir.to_path_buf(),
            message,
        };
        if Manifest::is_incomplete(dir) {
            return Err(input(
                "a build is still writing here (or died): not recorded".into(),
            ));
        }
        let manifest_path = dir.join(kiln_model::manifest::MANIFEST_FILE);
        let bytes = std::fs::read(&manifest_path)
            .map_err(|e| input(format!("cannot read manifest.json: {e}")))?;
        // The bytes the digest is of: read once.
        let m = Manifest::parse(&bytes, &manifest_path).map_err(|e| input(e.to_string()))?;
        let location = std::fs::canonicalize(dir)
            .unwrap_or_else(|_| dir.to_path_buf())
            .display()
            .to_string();
        // The records beside the manifest, by their digests.
        let mut docs: Vec<Doc> = Vec::new();
        for s in m.sbom_files() {
            for (kind, name) in [("spdx", &s.spdx), ("cyclonedx", &s.cyclonedx)] {
                if let Some((size, sha)) = file_digest(&dir.join(name)) {
                    docs.push(Doc {
                        kind: kind.into(),
                        path: name.clone(),
                        architecture: Some(s.architecture.clone()),
                        size,
                        sha256: sha,
                    });
                }
            }
        }
        if let Some((size, sha)) = file_digest(&dir.join("provenance.json")) {
            docs.push(Doc {
                kind: "provenance".into(),
                path: "provenance.json".into(),
                architecture: None,
                size,
                sha256: sha,
            });
        }
        self.record_manifest(&bytes, &m, &location, &docs, true)
    }

    /// Records an image version read from somewhere other than its build's
    /// output directory (a download tree): its `manifest.json` bytes (`origin`
    /// names them in errors), `location` (the tree), the artifacts as they
    /// are there (paths relative to `location`) and where it is published.
    /// Returns whether the version was new.
    pub fn record_imported(
        &mut self,
        manifest: &[u8],
        origin: &Path,
        location: &str,
        artifacts: &[FoundArtifact],
        publication: &Publication,
    ) -> Result<bool, CatalogError> {
        let m = Manifest::parse(manifest, origin).map_err(|e| CatalogError::Input {
            path: origin.to_path_buf(),
            message: e.to_string(),
        })?;
        let docs: Vec<Doc> = artifacts
            .iter()
            .map(|a| Doc {
                kind: a.kind.clone(),
                path: a.path.clone(),
                architecture: a.architecture.clone(),
                size: a.size,
                sha256: a.sha256.clone(),
            })
            .collect();
        let (id, new) = self.record_manifest(manifest, &m, location, &docs, false)?;
        self.publish_row(id, publication)?;
        Ok(new)
    }

    /// Records one image version from its manifest's bytes (parsed as `m`),
    /// found at `location`, with the records beside it.
    fn record_manifest(
        &mut self,
        bytes: &[u8],
        m: &Manifest,
        location: &str,
        docs: &[Doc],
        manifest_outputs: bool,
    ) -> Result<(i64, bool), CatalogError> {
        let digest = sha256_hex(bytes);
        let now = unix_now();
        let path = self.path.clone();
        let db = db_err(&path);
        self.write(|conn| {
            let existing = conn
                .query_one(
                    "SELECT id FROM image WHERE manifest_sha256 = ?1",
                    args![&digest],
                )
                .map_err(db)?;
            if let Some(row) = existing {
                let id = row.i(0);
                // Known from its build directory: an import from a tree
                // adds where it is published, not another location.
                if !manifest_outputs {
                    return Ok((id, false));
                }
                conn.exec(
                    "UPDATE image SET location = ?1, recorded_at = ?2 WHERE id = ?3",
                    args![location, now, id],
                )
                .map_err(db)?;
                return Ok((id, false));
            }
            let id = conn
                .query_one(
                    "INSERT INTO image (manifest_sha256, name, version, suite, architectures, distroless, \
                     source_date_epoch, recipe_sha256, generator, location, recorded_at) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11) RETURNING id",
                    args![
                        &digest,
                        &m.image,
                        m.version.clone(),
                        &m.suite,
                        m.architectures.join(" "),
                        m.distroless,
                        m.source_date_epoch,
                        &m.lock.recipe_sha256,
                        &m.generator,
                        location,
                        now
                    ],
                )
                .map_err(db)?
                .map(|r| r.i(0))
                .unwrap_or_default();
            // Many rows per statement: one round trip per 500 packages on a
            // server, not one per package.
            for chunk in m.packages.chunks(500) {
                let mut sql = String::from(
                    "INSERT INTO package (image_id, name, version, architecture, target, source, \
                     source_version, sha256) VALUES ",
                );
                let mut values: Vec<V> = Vec::with_capacity(chunk.len() * 8);
                for (k, p) in chunk.iter().enumerate() {
                    let b = k * 8;
                    if k > 0 {
                        sql.push_str(", ");
                    }
                    sql.push_str(&format!(
                        "(?{}, ?{}, ?{}, ?{}, ?{}, ?{}, ?{}, ?{})",
                        b + 1,
                        b + 2,
                        b + 3,
                        b + 4,
                        b + 5,
                        b + 6,
                        b + 7,
                        b + 8
                    ));
                    values.extend([
                        V::I(id),
                        (&p.name).into(),
                        (&p.version).into(),
                        (&p.architecture).into(),
                        (&p.target).into(),
                        (&p.source).into(),
                        (&p.source_version).into(),
                        (&p.sha256).into(),
                    ]);
                }
                conn.exec(&sql, &values).map_err(db)?;
            }
            let artifact = "INSERT INTO artifact (image_id, kind, path, architecture, size, sha256) \
                            VALUES (?1, ?2, ?3, ?4, ?5, ?6)";
            for a in m.outputs.iter().filter(|_| manifest_outputs) {
                conn.exec(
                    artifact,
                    args![
                        id,
                        a.format.name(),
                        &a.path,
                        a.architecture.clone(),
                        a.size,
                        &a.sha256
                    ],
                )
                .map_err(db)?;
            }
            for d in docs {
                conn.exec(
                    artifact,
                    args![id, &d.kind, &d.path, d.architecture.clone(), d.size, &d.sha256],
                )
                .map_err(db)?;
            }
            Ok((id, true))
        })
    }

    /// Records a `kiln test` run of the artifact `artifact` of the build in
    /// `dir` (which is recorded first if the catalog does not know it).
    pub fn record_test(
        &mut self,
        dir: &Path,
        artifact: &str,
        passed: bool,
        seconds: f64,
        report: &Path,
    ) -> Result<(), CatalogError> {
        let (id, _) = self.record(dir)?;
        let report = report.display().to_string();
        let db = db_err(&self.path);
        self.conn
            .get_mut()
            .exec(
                "INSERT INTO test_run (image_id, artifact, passed, seconds, report, at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                args![id, artifact, passed, seconds, report, unix_now()],
            )
            .map_err(db)?;
        Ok(())
    }

    /// Records that the build in `dir` (recorded first if the catalog does
    /// not know it) was published: call it only after the publication
    /// succeeded. Publishing the same build to the same place again updates
    /// the time and digest instead of adding a row.
    pub fn record_publication(&mut self, dir: &Path, p: &Publication) -> Result<(), CatalogError> {
        let (id, _) = self.record(dir)?;
        self.publish_row(id, p)
    }

    fn publish_row(&mut self, id: i64, p: &Publication) -> Result<(), CatalogError> {
        let db = db_err(&self.path);
        self.conn
            .get_mut()
            .exec(
                "INSERT INTO publication (image_id, target, kind, location, digest, channel, published_at, region) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) \
                 ON CONFLICT (image_id, target, location) DO UPDATE SET \
                 kind = excluded.kind, digest = excluded.digest, channel = excluded.channel, \
                 published_at = excluded.published_at, region = excluded.region",
                args![
                    id,
                    &p.target,
                    &p.kind,
                    &p.location,
                    p.digest.clone(),
                    p.channel.clone(),
                    unix_now(),
                    p.region.clone()
                ],
            )
            .map_err(db)?;
        Ok(())
    }

    /// Records a channel's whole rollout as `kiln release` signed it
    /// (releases no longer in it leave the catalog).
    pub fn record_rollout(
        &mut self,
        tree: &str,
        r: &kiln_model::rollout::Rollout,
    ) -> Result<(), CatalogError> {
        let path = self.path.clone();
        let db = db_err(&path);
        let now = unix_now();
        self.write(|conn| {
            conn.exec(
                "DELETE FROM rollout WHERE tree = ?1 AND channel = ?2",
                args![tree, &r.channel],
            )
            .map_err(db)?;
            for x in &r.releases {
                conn.exec(
                    "INSERT INTO rollout (tree, channel, image, version, since, start_bp, duration, paused, barrier, recorded_at) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                    args![
                        tree,
                        &r.channel,
                        &x.image,
                        &x.version,
                        x.since,
                        x.start as i64,
                        x.duration,
                        x.paused as i64,
                        x.barrier as i64,
                        now
                    ],
                )
                .map_err(db)?;
            }
            Ok(())
        })
    }

    /// Every recorded release: (image, version, its rollout).
    pub fn rollouts(&self) -> Result<Vec<(String, String, FoundRollout)>, CatalogError> {
        let db = db_err(&self.path);
        let rows = self
            .conn
            .borrow_mut()
            .query(
                "SELECT tree, channel, image, version, since, start_bp, duration, paused, barrier, recorded_at \
                 FROM rollout ORDER BY tree, channel, image, version",
                &[],
            )
            .map_err(db)?;
        Ok(rows
            .iter()
            .map(|r| {
                let rel = kiln_model::rollout::Release {
                    image: r.t(2),
                    version: r.t(3),
                    since: r.i(4),
                    start: r.i(5).clamp(0, 10_000) as u32,
                    duration: r.i(6),
                    paused: r.i(7) != 0,
                    barrier: r.i(8) != 0,
                };
                (
                    rel.image.clone(),
                    rel.version.clone(),
                    FoundRollout::of(r.t(0), r.t(1), &rel, r.i(9)),
                )
            })
            .collect())
    }

    /// Records what a watch pass found for the version whose manifest has
    /// this sha256 (replacing the last pass's finding).
    pub fn record_watch(
        &mut self,
        manifest_sha256: &str,
        w: &WatchState,
    ) -> Result<(), CatalogError> {
        let db = db_err(&self.path);
        self.conn
            .get_mut()
            .exec(
                "INSERT INTO watch_state (manifest_sha256, status, updates, security, cves, detail, checked_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) \
                 ON CONFLICT (manifest_sha256) DO UPDATE SET status = excluded.status, \
                 updates = excluded.updates, security = excluded.security, cves = excluded.cves, \
                 detail = excluded.detail, checked_at = excluded.checked_at",
                args![
                    manifest_sha256,
                    &w.status,
                    w.updates,
                    w.security,
                    w.cves.join(" "),
                    &w.detail,
                    w.checked_at
                ],
            )
            .map_err(db)?;
        Ok(())
    }

    /// Every version's last watch finding, by manifest sha256.
    pub fn watch_states(&self) -> Result<Vec<(String, WatchState)>, CatalogError> {
        let db = db_err(&self.path);
        let rows = self
            .conn
            .borrow_mut()
            .query(
                "SELECT manifest_sha256, status, updates, security, cves, detail, checked_at FROM watch_state",
                &[],
            )
            .map_err(db)?;
        Ok(rows
            .iter()
            .map(|r| {
                (
                    r.t(0),
                    WatchState {
                        status: r.t(1),
                        updates: r.i(2) as u64,
                        security: r.i(3) as u64,
                        cves: words(&r.t(4)),
                        detail: r.t(5),
                        checked_at: r.i(6),
                    },
                )
            })
            .collect())
    }

    /// Records one rebuild, whatever its outcome. Call it after the work:
    /// a `published` rebuild's publications are recorded already.
    pub fn record_rebuild(&mut self, r: &Rebuild) -> Result<(), CatalogError> {
        let db = db_err(&self.path);
        let packages = serde_json::to_string(&r.packages).expect("packages serialise");
        self.conn
            .get_mut()
            .exec(
                "INSERT INTO rebuild (image, from_manifest, to_manifest, outcome, packages, cves, \
                 release_date, output, error, started_at, finished_at, published_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
                args![
                    &r.image,
                    r.from_manifest.clone(),
                    r.to_manifest.clone(),
                    &r.outcome,
                    packages,
                    r.cves.join(" "),
                    r.release_date,
                    &r.output,
                    r.error.clone(),
                    r.started_at,
                    r.finished_at,
                    r.published_at
                ],
            )
            .map_err(db)?;
        Ok(())
    }

    /// The rebuilds of `image` (of every image with `None`), newest first.
    pub fn rebuilds(&self, image: Option<&str>) -> Result<Vec<Rebuild>, CatalogError> {
        let db = db_err(&self.path);
        let path = self.path.clone();
        let (filter, a): (&str, Vec<V>) = match image {
            Some(n) => ("WHERE image = ?1", vec![n.into()]),
            None => ("", Vec::new()),
        };
        let rows = self
            .conn
            .borrow_mut()
            .query(
                &format!(
                    "SELECT image, from_manifest, to_manifest, outcome, packages, cves, release_date, \
                     output, error, started_at, finished_at, published_at FROM rebuild {filter} \
                     ORDER BY finished_at DESC, id DESC"
                ),
                &a,
            )
            .map_err(db)?;
        rows.iter()
            .map(|r| {
                Ok(Rebuild {
                    image: r.t(0),
                    from_manifest: r.ot(1),
                    to_manifest: r.ot(2),
                    outcome: r.t(3),
                    packages: serde_json::from_str(&r.t(4)).map_err(|e| CatalogError::Input {
                        path: path.clone(),
                        message: format!("a rebuild's package list is damaged: {e}"),
                    })?,
                    cves: words(&r.t(5)),
                    release_date: r.oi(6),
                    output: r.t(7),
                    error: r.ot(8),
                    started_at: r.i(9),
                    finished_at: r.i(10),
                    published_at: r.oi(11),
                })
            })
            .collect()
    }

    /// The image versions that match `q`, newest first.
    pub fn find(&self, q: &Query) -> Result<Vec<Found>, CatalogError> {
        let db = db_err(&self.path);
        let mut conn = self.conn.borrow_mut();
        // The WHERE clauses after `WHERE 1 = 1`.
        let mut filter = String::new();
        let mut args: Vec<V> = Vec::new();
        if let Some(n) = &q.image {
            args.push(n.into());
            filter += &format!(" AND name = ?{}", args.len());
        }
        if let Some(s) = &q.suite {
            args.push(s.into());
            filter += &format!(" AND suite = ?{}", args.len());
        }
        if let Some(a) = &q.architecture {
            args.push(format!("% {a} %").into());
            filter += &format!(" AND (' ' || architectures || ' ') LIKE ?{}", args.len());
        }
        if let Some(f) = &q.format {
            args.push(f.into());
            filter += &format!(
                " AND id IN (SELECT image_id FROM artifact WHERE kind = ?{})",
                args.len()
            );
        }
        if let Some(c) = &q.channel {
            args.push(c.into());
            filter += &format!(
                " AND id IN (SELECT image_id FROM publication WHERE channel = ?{})",
                args.len()
            );
        }
        match (&q.provider, &q.region) {
            (Some(p), Some(r)) => {
                args.push(p.into());
                args.push(r.into());
                filter += &format!(
                    " AND id IN (SELECT image_id FROM publication WHERE kind = ?{} AND region = ?{})",
                    args.len() - 1,
                    args.len()
                );
            }
            (Some(p), None) => {
                args.push(p.into());
                filter += &format!(
                    " AND id IN (SELECT image_id FROM publication WHERE kind = ?{})",
                    args.len()
                );
            }
            (None, Some(r)) => {
                args.push(r.into());
                filter += &format!(
                    " AND id IN (SELECT image_id FROM publication WHERE region = ?{})",
                    args.len()
                );
            }
            (None, None) => {}
        }
        if let Some(p) = &q.package {
            args.push((&p.name).into());
            // Through the index on package names (a correlated EXISTS
            // made SQLite walk every image's packages).
            filter += &format!(
                " AND id IN (SELECT image_id FROM package WHERE name = ?{})",
                args.len()
            );
        }
        let rows = conn
            .query(
                &format!(
                    "SELECT id, name, version, suite, architectures, distroless, source_date_epoch, \
                     manifest_sha256, location, recorded_at FROM image WHERE 1 = 1{filter} \
                     ORDER BY source_date_epoch DESC, recorded_at DESC, id DESC"
                ),
                &args,
            )
            .map_err(db)?;
        let mut found: Vec<Found> = rows
            .iter()
            .map(|r| Found {
                id: r.i(0),
                image: r.t(1),
                version: r.ot(2),
                suite: r.t(3),
                architectures: r.t(4).split(' ').map(str::to_string).collect(),
                distroless: r.b(5),
                source_date_epoch: r.i(6),
                manifest_sha256: r.t(7),
                location: r.t(8),
                recorded_at: r.i(9),
                packages: Vec::new(),
                artifacts: Vec::new(),
                tests: Vec::new(),
                publications: Vec::new(),
                watch: None,
                rebuild: None,
                rollouts: Vec::new(),
            })
            .collect();
        let order_rows = match conn.dialect() {
            Dialect::Sqlite => "rowid",
            Dialect::Postgres => "ctid",
        };
        // The details of all found versions in four statements (not a
        // statement per version): by a list of their ids when they are few;
        // when they are many, every row, skipping those of other versions
        // (cheaper than a long list or a subquery each statement re-runs).
        if found.is_empty() {
            return Ok(found);
        }
        let at: std::collections::HashMap<i64, usize> =
            found.iter().enumerate().map(|(k, f)| (f.id, k)).collect();
        let list = if found.len() <= 500 {
            // Integers from the database itself: no quoting to get wrong.
            let ids: Vec<String> = found.iter().map(|f| f.id.to_string()).collect();
            format!("image_id IN ({})", ids.join(","))
        } else {
            "1 = 1".to_string()
        };
        let mine = |r: &db::Row| at.get(&r.i(0)).copied();
        if let Some(p) = &q.package {
            let rows = conn
                .query(
                    &format!(
                        "SELECT image_id, name, version, target FROM package \
                         WHERE name = ?1 AND {list} ORDER BY image_id, {order_rows}"
                    ),
                    args![&p.name],
                )
                .map_err(db)?;
            for r in rows {
                let Some(k) = mine(&r) else { continue };
                let x = FoundPackage {
                    name: r.t(1),
                    version: r.t(2),
                    architecture: r.t(3),
                };
                if p.matches(&x.version) {
                    found[k].packages.push(x);
                }
            }
        }
        let rows = conn
            .query(
                &format!(
                    "SELECT image_id, kind, path, architecture, size, sha256 FROM artifact \
                     WHERE {list} ORDER BY image_id, {order_rows}"
                ),
                &[],
            )
            .map_err(db)?;
        for r in rows {
            let Some(k) = mine(&r) else { continue };
            found[k].artifacts.push(FoundArtifact {
                kind: r.t(1),
                path: r.t(2),
                architecture: r.ot(3),
                size: r.i(4) as u64,
                sha256: r.t(5),
            });
        }
        let rows = conn
            .query(
                &format!(
                    "SELECT image_id, artifact, passed, seconds, report, at FROM test_run \
                     WHERE {list} ORDER BY at DESC, {order_rows} DESC"
                ),
                &[],
            )
            .map_err(db)?;
        for r in rows {
            let Some(k) = mine(&r) else { continue };
            found[k].tests.push(FoundTest {
                artifact: r.t(1),
                passed: r.b(2),
                seconds: r.f(3),
                report: r.t(4),
                at: r.i(5),
            });
        }
        let rows = conn
            .query(
                &format!(
                    "SELECT image_id, target, kind, location, digest, channel, published_at, region \
                     FROM publication WHERE {list} \
                     ORDER BY published_at DESC, id DESC"
                ),
                &[],
            )
            .map_err(db)?;
        for r in rows {
            let Some(k) = mine(&r) else { continue };
            found[k].publications.push(Publication {
                target: r.t(1),
                kind: r.t(2),
                location: r.t(3),
                digest: r.ot(4),
                channel: r.ot(5),
                published_at: r.i(6),
                region: r.ot(7),
            });
        }
        drop(conn);
        let by_sha: std::collections::HashMap<String, usize> = found
            .iter()
            .enumerate()
            .map(|(k, f)| (f.manifest_sha256.clone(), k))
            .collect();
        for (sha, w) in self.watch_states()? {
            if let Some(&k) = by_sha.get(&sha) {
                found[k].watch = Some(w);
            }
        }
        // Oldest first: the newest rebuild that made a version is its own.
        for r in self.rebuilds(None)?.into_iter().rev() {
            if let Some(&k) = r.to_manifest.as_ref().and_then(|m| by_sha.get(m)) {
                found[k].rebuild = Some(r);
            }
        }
        for (image, version, r) in self.rollouts()? {
            for f in found
                .iter_mut()
                .filter(|f| f.image == image && f.version.as_deref() == Some(version.as_str()))
            {
                f.rollouts.push(r.clone());
            }
        }
        if q.package.is_some() {
            found.retain(|f| !f.packages.is_empty());
        }
        if q.latest {
            let mut seen = std::collections::HashSet::new();
            found.retain(|f| seen.insert(f.image.clone()));
        }
        Ok(found)
    }
}

/// An SBOM or provenance file recorded beside a build's artifacts.
struct Doc {
    kind: String,
    path: String,
    architecture: Option<String>,
    size: u64,
    sha256: String,
}

/// The error for a database call on the catalog at `path`.
fn db_err(path: &Path) -> impl Fn(DbError) -> CatalogError + Copy + '_ {
    move |source| CatalogError::Db {
        path: path.to_path_buf(),
        source,
    }
}

fn words(s: &str) -> Vec<String> {
    s.split_whitespace().map(str::to_string).collect()
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// The first 16 bytes of `path` (SQLite's magic), `None` if unreadable.
fn file_head(path: &Path) -> Option<Vec<u8>> {
    use std::io::Read;
    let mut head = Vec::with_capacity(16);
    std::fs::File::open(path)
        .ok()?
        .take(16)
        .read_to_end(&mut head)
        .ok()?;
    Some(head)
}

fn sha256_hex(b: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(b))
}

fn file_digest(p: &Path) -> Option<(u64, String)> {
    // A link is no record of the build.
    let meta = std::fs::symlink_metadata(p).ok()?;
    if !meta.is_file() {
        return None;
    }
    let bytes = std::fs::read(p).ok()?;
    Some((bytes.len() as u64, sha256_hex(&bytes)))
}

/// What the catalog holds, by the filters of [`Query`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Facets {
    /// Distinct image names.
    pub images: u64,
    /// Image versions.
    pub versions: u64,
    pub suites: Vec<String>,
    pub architectures: Vec<String>,
    /// Artifact kinds (`tar`, `oci`, `disk`, `qcow2`).
    pub formats: Vec<String>,
    /// Download-tree channels versions were published to.
    pub channels: Vec<String>,
    /// Cloud regions versions were published to (any provider).
    pub regions: Vec<String>,
}

/// What `kiln find` asks.
#[derive(Clone, Debug, Default)]
pub struct Query {
    pub image: Option<String>,
    pub suite: Option<String>,
    pub architecture: Option<String>,
    pub format: Option<String>,
    pub package: Option<PackageQuery>,
    /// Only versions published to this channel of a download tree.
    pub channel: Option<String>,
    /// Only versions published to this cloud (`aws`), and to this region
    /// of it.
    pub provider: Option<String>,
    pub region: Option<String>,
    /// Only the newest version of each image.
    pub latest: bool,
}

/// `NAME` or `NAME OP VERSION`, compared in dpkg's order.
#[derive(Clone, Debug)]
pub struct PackageQuery {
    pub name: String,
    pub constraint: Option<(String, kiln_deb::Version)>,
}

impl PackageQuery {
    pub fn parse(s: &str) -> Result<PackageQuery, CatalogError> {
        let bad = || CatalogError::Query(s.to_string());
        let s = s.trim();
        let at = s.find(['<', '>', '=']);
        let (name, rest) = match at {
            Some(i) => (s[..i].trim(), Some(s[i..].trim())),
            None => (s, None),
        };
        if name.is_empty() || name.contains(char::is_whitespace) {
            return Err(bad());
        }
        let constraint = match rest {
            None => None,
            Some(r) => {
                let op = ["<<", "<=", ">=", ">>", "="]
                    .into_iter()
                    .find(|o| r.starts_with(o))
                    .ok_or_else(bad)?;
                let v = kiln_deb::Version::parse(r[op.len()..].trim()).map_err(|_| bad())?;
                Some((op.to_string(), v))
            }
        };
        Ok(PackageQuery {
            name: name.to_string(),
            constraint,
        })
    }

    pub fn matches(&self, version: &str) -> bool {
        let Some((op, want)) = &self.constraint else {
            return true;
        };
        let Ok(v) = kiln_deb::Version::parse(version) else {
            return false;
        };
        let o = v.cmp(want);
        use std::cmp::Ordering::*;
        match op.as_str() {
            "<<" => o == Less,
            "<=" => o != Greater,
            "=" => o == Equal,
            ">=" => o != Less,
            ">>" => o == Greater,
            _ => false,
        }
    }
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Found {
    #[serde(skip)]
    pub id: i64,
    pub image: String,
    pub version: Option<String>,
    pub suite: String,
    pub architectures: Vec<String>,
    pub distroless: bool,
    pub source_date_epoch: i64,
    pub manifest_sha256: String,
    /// The build's output directory.
    pub location: String,
    pub recorded_at: i64,
    /// The queried package's versions in this image (with --package).
    pub packages: Vec<FoundPackage>,
    pub artifacts: Vec<FoundArtifact>,
    /// `kiln test` runs, newest first.
    pub tests: Vec<FoundTest>,
    /// Where it was published, newest first.
    pub publications: Vec<Publication>,
    /// The last `kiln watch` pass's finding (none: never checked).
    pub watch: Option<WatchState>,
    /// The `kiln watch --rebuild` that made this version, if one did.
    pub rebuild: Option<Rebuild>,
    /// Its releases in update channels (`kiln release`).
    pub rollouts: Vec<FoundRollout>,
}

/// A version's release in one update channel, as the catalog last
/// recorded it, with its share computed when it was read.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct FoundRollout {
    pub tree: String,
    pub channel: String,
    /// `rolling`, `complete` or `paused`.
    pub state: String,
    /// Percent of machines admitted when read.
    pub share: f64,
    /// Percent admitted when the wave (re)started.
    pub start: f64,
    pub since: i64,
    pub duration_seconds: i64,
    /// When every machine is admitted (none while paused).
    pub complete_at: Option<i64>,
    pub barrier: bool,
    pub recorded_at: i64,
}

impl FoundRollout {
    fn of(
        tree: String,
        channel: String,
        r: &kiln_model::rollout::Release,
        recorded_at: i64,
    ) -> Self {
        let now = unix_now();
        FoundRollout {
            tree,
            channel,
            state: r.state(now).into(),
            share: r.share(now) as f64 / 100.0,
            start: r.start as f64 / 100.0,
            since: r.since,
            duration_seconds: r.duration,
            complete_at: r.complete_at(),
            barrier: r.barrier,
            recorded_at,
        }
    }
}

/// What a `kiln watch` pass found for one image version.
#[derive(Clone, Debug, PartialEq, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct WatchState {
    /// `up-to-date`, `updates`, `security` or `unknown`.
    pub status: String,
    /// Packages with a newer candidate.
    pub updates: u64,
    /// Of those, the ones from a `-security` suite.
    pub security: u64,
    /// CVE ids the pending updates fix (with a security tracker).
    pub cves: Vec<String>,
    /// The watch report's entries for this version (updates, open issues,
    /// the error of an unknown one), as JSON.
    #[serde(skip)]
    pub detail: String,
    pub checked_at: i64,
}

/// One rebuild `kiln watch --rebuild` made (or tried).
#[derive(Clone, Debug, PartialEq, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Rebuild {
    pub image: String,
    /// The manifest sha256 of the version that was behind.
    pub from_manifest: Option<String>,
    /// The manifest sha256 of the version built (none when no build was made).
    pub to_manifest: Option<String>,
    /// `published`, `built` (no `[[publish]]` targets), `test-failed`,
    /// `build-failed`, `publish-failed` or `lock-failed`.
    pub outcome: String,
    /// The packages that changed, and why: `[{package, architecture, from,
    /// to, suite, security}]`.
    pub packages: Vec<RebuildPackage>,
    pub cves: Vec<String>,
    /// The newest Release `Date` (seconds) of the suites the fixes came from.
    pub release_date: Option<i64>,
    /// The rebuild's output directory.
    pub output: String,
    pub error: Option<String>,
    pub started_at: i64,
    pub finished_at: i64,
    pub published_at: Option<i64>,
}

impl Rebuild {
    /// Seconds from the fix's Release `Date` to the published image.
    pub fn fix_to_publish(&self) -> Option<i64> {
        Some(self.published_at? - self.release_date?)
    }

    /// Whether it gave a usable version (published, or built with nowhere
    /// to publish): a version made by any other rebuild is not current.
    pub fn succeeded(&self) -> bool {
        matches!(self.outcome.as_str(), "published" | "built")
    }
}

/// One package a rebuild changed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct RebuildPackage {
    pub package: String,
    pub architecture: String,
    pub from: Option<String>,
    pub to: Option<String>,
    /// The suite the new version came from (when the watch saw it).
    pub suite: Option<String>,
    pub security: bool,
}

/// One place a build was published to by `kiln publish`.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Publication {
    /// The target as given (`file:///srv/images`, `HOST/REPO`).
    pub target: String,
    /// `tree` or `registry`.
    pub kind: String,
    /// Where it can be fetched: the channel document in a tree, or
    /// `HOST/REPO@sha256:…` in a registry.
    pub location: String,
    /// The image manifest digest (registries) or the document's sha256 (trees).
    pub digest: Option<String>,
    /// The channel, for trees.
    pub channel: Option<String>,
    pub published_at: i64,
    /// The cloud region, for cloud images (`kind` is the provider: `aws`).
    pub region: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct FoundTest {
    /// The tested artifact's path in the output directory.
    pub artifact: String,
    pub passed: bool,
    pub seconds: f64,
    /// The JUnit report.
    pub report: String,
    pub at: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct FoundPackage {
    pub name: String,
    pub version: String,
    pub architecture: String,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct FoundArtifact {
    /// `tar`, `oci`, `disk`, `qcow2`, `spdx`, `cyclonedx` or `provenance`.
    pub kind: String,
    pub path: String,
    pub architecture: Option<String>,
    pub size: u64,
    pub sha256: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build_dir(root: &Path, name: &str, epoch: i64, packages: &[(&str, &str)]) -> PathBuf {
        kiln_testkit::fake_build(root, name, epoch, packages)
    }

    #[test]
    fn a_read_only_catalog_is_read_and_never_written() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("catalog.sqlite");
        assert!(
            Catalog::open_read_only(&path).is_err(),
            "a missing catalog was created"
        );
        assert!(!path.exists());
        let mut c = Catalog::open(&path).unwrap();
        let b = build_dir(d.path(), "web", 100, &[("zlib", "1"), ("curl", "8")]);
        c.record_build(&b).unwrap();
        drop(c);
        let before = std::fs::read(&path).unwrap();
        let r = Catalog::open_read_only(&path).unwrap();
        let f = r.find(&Query::default()).unwrap();
        let names: Vec<String> = r
            .packages(&f[0].manifest_sha256)
            .unwrap()
            .into_iter()
            .map(|p| p.name)
            .collect();
        assert_eq!(names, ["curl", "zlib"]);
        assert!(r.packages(&"0".repeat(64)).unwrap().is_empty());
        drop(r);
        assert_eq!(std::fs::read(&path).unwrap(), before);
        // A catalog of an older schema is named, not migrated.
        rusqlite::Connection::open(&path)
            .unwrap()
            .execute(
                "UPDATE kiln_catalog SET value = '2' WHERE key = 'schema-version'",
                [],
            )
            .unwrap();
        let e = Catalog::open_read_only(&path).err().unwrap();
        assert!(
            e.to_string().contains("schema version 2, this kiln reads"),
            "{e}"
        );
    }

    #[test]
    fn a_publication_is_listed_once_per_place_with_its_latest_digest() {
        let d = tempfile::tempdir().unwrap();
        let mut c = Catalog::open(&d.path().join("catalog.sqlite")).unwrap();
        let b = build_dir(d.path(), "web", 100, &[("curl", "8")]);
        let p = |digest: &str| Publication {
            target: "localhost:5000/web".into(),
            kind: "registry".into(),
            location: "localhost:5000/web:1".into(),
            digest: Some(digest.into()),
            channel: None,
            published_at: 0,
            region: None,
        };
        c.record_publication(&b, &p("sha256:aa")).unwrap();
        c.record_publication(&b, &p("sha256:bb")).unwrap();
        let mut tree = p("x");
        tree.kind = "tree".into();
        tree.target = "file:///srv/images".into();
        tree.location = "/srv/images/channels/stable.json".into();
        tree.channel = Some("stable".into());
        c.record_publication(&b, &tree).unwrap();
        let f = c.find(&Query::default()).unwrap();
        assert_eq!(f.len(), 1, "publishing recorded the build twice");
        let mut got: Vec<_> = f[0]
            .publications
            .iter()
            .map(|p| (p.kind.as_str(), p.location.as_str(), p.digest.as_deref()))
            .collect();
        got.sort();
        assert_eq!(
            got,
            [
                ("registry", "localhost:5000/web:1", Some("sha256:bb")),
                ("tree", "/srv/images/channels/stable.json", Some("x"))
            ]
        );
        // --channel: only versions published to that channel of a tree.
        let other = build_dir(d.path(), "web", 200, &[("curl", "9")]);
        c.record_build(&other).unwrap();
        tree.channel = Some("testing".into());
        tree.location = "/srv/images/channels/testing.json".into();
        c.record_publication(&other, &tree).unwrap();
        let by = |channel: &str| -> Vec<i64> {
            c.find(&Query {
                channel: Some(channel.into()),
                ..Default::default()
            })
            .unwrap()
            .iter()
            .map(|f| f.source_date_epoch)
            .collect()
        };
        assert_eq!(by("stable"), [100]);
        assert_eq!(by("testing"), [200]);
        assert!(by("nightly").is_empty());
        assert_eq!(c.find(&Query::default()).unwrap().len(), 2);
        let f = c.facets().unwrap();
        assert_eq!((f.images, f.versions), (1, 2));
        assert_eq!(f.channels, ["stable", "testing"]);
        assert_eq!(f.suites.len(), 1);
    }

    /// Over 500 versions found, the details are read by a scan instead of
    /// an id list: each version still gets its own and only its own.
    #[test]
    fn many_versions_get_the_same_details_as_few() {
        let d = tempfile::tempdir().unwrap();
        let mut c = Catalog::open(&d.path().join("catalog.sqlite")).unwrap();
        for n in 0..520 {
            let name = if n % 2 == 0 { "even" } else { "odd" };
            let version = format!("1.{n}-1");
            let b = build_dir(
                &d.path().join(n.to_string()),
                name,
                n,
                &[("zlib", &version)],
            );
            c.record_build(&b).unwrap();
            if n % 7 == 0 {
                c.record_test(&b, "rootfs.tar", n % 2 == 0, 1.0, Path::new("/r.xml"))
                    .unwrap();
            }
        }
        let q = |image: Option<&str>| Query {
            image: image.map(str::to_string),
            package: Some(PackageQuery::parse("zlib").unwrap()),
            ..Default::default()
        };
        let all = c.find(&q(None)).unwrap();
        assert_eq!(all.len(), 520);
        let few = c.find(&q(Some("odd"))).unwrap();
        assert_eq!(few.len(), 260);
        for f in &few {
            let same = all.iter().find(|a| a.id == f.id).unwrap();
            assert_eq!(same.packages, f.packages);
            assert_eq!(same.tests.len(), f.tests.len());
            assert_eq!(
                same.packages[0].version,
                format!("1.{}-1", f.source_date_epoch)
            );
            assert_eq!(f.tests.len(), usize::from(f.source_date_epoch % 7 == 0));
        }
    }

    #[test]
    fn records_once_and_finds_by_package_version_in_dpkg_order() {
        let d = tempfile::tempdir().unwrap();
        let mut c = Catalog::open(&d.path().join("c/catalog.sqlite")).unwrap();
        let old = build_dir(
            d.path(),
            "web",
            100,
            &[("openssl", "3.5.1-1"), ("curl", "8")],
        );
        let new = build_dir(d.path(), "web", 200, &[("openssl", "3.5.4-1~deb13u1")]);
        let other = build_dir(d.path(), "db", 150, &[("openssl", "3.5.10-1")]);
        assert!(c.record_build(&old).unwrap());
        assert!(!c.record_build(&old).unwrap(), "recorded twice");
        assert!(c.record_build(&new).unwrap());
        assert!(c.record_build(&other).unwrap());
        let find = |p: &str, latest: bool| -> Vec<(String, i64, String)> {
            c.find(&Query {
                package: Some(PackageQuery::parse(p).unwrap()),
                latest,
                ..Default::default()
            })
            .unwrap()
            .into_iter()
            .map(|f| (f.image, f.source_date_epoch, f.packages[0].version.clone()))
            .collect()
        };
        // 3.5.10 > 3.5.4-1 > 3.5.4-1~deb13u1 in dpkg's order, not as strings.
        assert_eq!(
            find("openssl<<3.5.4-1", false),
            [
                ("web".to_string(), 200, "3.5.4-1~deb13u1".to_string()),
                ("web".into(), 100, "3.5.1-1".into())
            ]
        );
        assert_eq!(
            find("openssl>>3.5.4-1", false),
            [("db".to_string(), 150, "3.5.10-1".to_string())]
        );
        assert_eq!(
            find("openssl", true).len(),
            2,
            "one per image with --latest"
        );
        assert_eq!(
            find("curl", false),
            [("web".to_string(), 100, "8".to_string())]
        );
        assert!(find("nosuch", false).is_empty());
        let all = c
            .find(&Query {
                format: Some("tar".into()),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(all.len(), 3);
        let kinds: Vec<&str> = all[0].artifacts.iter().map(|a| a.kind.as_str()).collect();
        assert_eq!(kinds, ["tar", "spdx"]);
        assert!(c
            .find(&Query {
                format: Some("oci".into()),
                ..Default::default()
            })
            .unwrap()
            .is_empty());
        assert!(matches!(
            PackageQuery::parse("openssl<3"),
            Err(CatalogError::Query(_))
        ));
        assert!(matches!(
            PackageQuery::parse("openssl<<not a version"),
            Err(CatalogError::Query(_))
        ));
    }

    #[test]
    fn a_broken_or_unfinished_build_records_nothing() {
        let d = tempfile::tempdir().unwrap();
        let mut c = Catalog::open(&d.path().join("catalog.sqlite")).unwrap();
        let dir = build_dir(d.path(), "web", 1, &[("a", "1")]);
        // Hostile: a manifest naming a field the schema does not have.
        let text = std::fs::read_to_string(dir.join("manifest.json")).unwrap();
        std::fs::write(
            dir.join("manifest.json"),
            text.replace("\"users\"", "\"userz\""),
        )
        .unwrap();
        assert!(c.record_build(&dir).is_err());
        std::fs::write(dir.join("manifest.json"), &text).unwrap();
        std::fs::write(dir.join(".kiln-incomplete"), "").unwrap();
        assert!(c
            .record_build(&dir)
            .unwrap_err()
            .to_string()
            .contains("still writing"));
        assert!(c.find(&Query::default()).unwrap().is_empty());
    }

    #[test]
    fn a_file_that_is_no_catalog_or_a_newer_one_is_refused_and_left_alone() {
        let d = tempfile::tempdir().unwrap();
        let junk = d.path().join("junk.sqlite");
        std::fs::write(&junk, b"definitely not sqlite").unwrap();
        let e = Catalog::open(&junk).err().unwrap();
        assert!(e.to_string().contains("not a Kiln catalog"), "{e}");
        assert_eq!(std::fs::read(&junk).unwrap(), b"definitely not sqlite");

        let other = d.path().join("other.sqlite");
        rusqlite::Connection::open(&other)
            .unwrap()
            .execute_batch("CREATE TABLE t (x);")
            .unwrap();
        let before = std::fs::read(&other).unwrap();
        let e = Catalog::open(&other).err().unwrap();
        assert!(e.to_string().contains("not a Kiln catalog"), "{e}");
        assert_eq!(std::fs::read(&other).unwrap(), before);

        let newer = d.path().join("newer.sqlite");
        drop(Catalog::open(&newer).unwrap());
        rusqlite::Connection::open(&newer)
            .unwrap()
            .execute(
                "UPDATE kiln_catalog SET value = '99' WHERE key = 'schema-version'",
                [],
            )
            .unwrap();
        let before = std::fs::read(&newer).unwrap();
        let e = Catalog::open(&newer).err().unwrap();
        assert!(e.to_string().contains("schema version 99, newer"), "{e}");
        assert_eq!(std::fs::read(&newer).unwrap(), before);
    }

    #[test]
    fn a_version_1_catalog_is_migrated_and_keeps_its_entries() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("catalog.sqlite");
        // A catalog as the first schema left it.
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(
            "CREATE TABLE kiln_catalog (key TEXT PRIMARY KEY, value TEXT NOT NULL);\
             INSERT INTO kiln_catalog VALUES ('schema-version', '1');",
        )
        .unwrap();
        conn.execute_batch(MIGRATIONS[0]).unwrap();
        drop(conn);
        let dir = build_dir(d.path(), "web", 1, &[("a", "1")]);
        {
            // Record with only the first migration applied, by hand.
            let mut c = Catalog {
                conn: std::cell::RefCell::new(Conn::Sqlite(
                    rusqlite::Connection::open(&path).unwrap(),
                )),
                path: path.clone(),
            };
            assert!(c.record_build(&dir).unwrap());
        }
        let mut c = Catalog::open(&path).unwrap();
        let v: String = c
            .conn
            .get_mut()
            .query_one(
                "SELECT value FROM kiln_catalog WHERE key = 'schema-version'",
                &[],
            )
            .unwrap()
            .unwrap()
            .t(0);
        assert_eq!(v, SCHEMA_VERSION.to_string());
        c.record_test(&dir, "rootfs.tar", false, 1.5, Path::new("/r.xml"))
            .unwrap();
        c.record_test(&dir, "rootfs.tar", true, 2.0, Path::new("/r.xml"))
            .unwrap();
        let f = c.find(&Query::default()).unwrap();
        assert_eq!(f.len(), 1, "the entry survived the migration");
        let runs: Vec<bool> = f[0].tests.iter().map(|t| t.passed).collect();
        assert_eq!(runs, [true, false], "newest first");
    }

    #[test]
    fn a_second_writer_waits_for_the_first() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("catalog.sqlite");
        drop(Catalog::open(&path).unwrap());
        let holder = rusqlite::Connection::open(&path).unwrap();
        holder.execute_batch("BEGIN IMMEDIATE;").unwrap();
        let dir = build_dir(d.path(), "web", 1, &[("a", "1")]);
        let writer = std::thread::spawn({
            let path = path.clone();
            move || {
                let start = std::time::Instant::now();
                let mut c = Catalog::open(&path).unwrap();
                c.record_build(&dir).unwrap();
                start.elapsed()
            }
        });
        std::thread::sleep(Duration::from_millis(400));
        holder.execute_batch("COMMIT;").unwrap();
        let waited = writer.join().unwrap();
        assert!(
            waited >= Duration::from_millis(300),
            "did not wait: {waited:?}"
        );
        let c = Catalog::open(&path).unwrap();
        assert_eq!(c.find(&Query::default()).unwrap().len(), 1);
    }
}
