//! The Azure image record: Resource Manager's managed image made from the
//! page blob, against a stand-in for Entra ID's token endpoint and
//! Resource Manager (no emulator has them) whose requests are checked.

use std::time::Duration;

use kiln_cloud::azure_image::{publish, ImageRecord, ImageReport};
use kiln_cloud::CloudError;
use kiln_testkit::azurite::{arm, ARM_TOKEN};
use kiln_testkit::{with_env, Recorder};

const SUB: &str = "11111111-2222-3333-4444-555555555555";
const TENANT: &str = "kiln-test.example";
const SECRET: &str = "client-secret-never-shown";
const BLOB: &str = "http://127.0.0.1:10000/devstoreaccount1/images/debian-13-amd64.vhd";

fn env(a: &Recorder, secret: &str, sub: Option<&str>) -> Vec<(&'static str, Option<String>)> {
    let url = format!("http://127.0.0.1:{}", a.port);
    vec![
        ("AZURE_SUBSCRIPTION_ID", sub.map(str::to_string)),
        ("AZURE_TENANT_ID", Some(TENANT.into())),
        ("AZURE_CLIENT_ID", Some("kiln-client".into())),
        ("AZURE_CLIENT_SECRET", Some(secret.into())),
        ("AZURE_AUTHORITY_HOST", Some(url.clone())),
        ("AZURE_RESOURCE_MANAGER_ENDPOINT", Some(url)),
    ]
}

fn run(
    a: &Recorder,
    secret: &str,
    rg: &str,
    location: &str,
    sha: &str,
    replace: bool,
) -> Result<ImageReport, CloudError> {
    with_env(&env(a, secret, Some(SUB)), || {
        publish(
            &ImageRecord {
                resource_group: rg.into(),
                location: location.into(),
            },
            "debian-13-amd64",
            BLOB,
            sha,
            &[("kiln_image".into(), "generic".into())],
            replace,
            Duration::from_secs(20),
            &|_| {},
        )
    })
}

fn methods(a: &Recorder) -> Vec<String> {
    a.requests
        .lock()
        .unwrap()
        .iter()
        .map(|r| r.0.clone())
        .collect()
}

#[test]
fn the_image_is_made_from_the_blob_once_and_bad_input_is_refused() {
    let a = arm(TENANT, SECRET, &["westeurope", "eastus"]);
    let sha = "ab".repeat(32);
    let r = run(&a, SECRET, "rg-images", "westeurope", &sha, false).unwrap();
    let id = format!(
        "/subscriptions/{SUB}/resourceGroups/rg-images/providers/Microsoft.Compute/images/debian-13-amd64"
    );
    assert_eq!((r.how, r.id.as_str()), ("created", id.as_str()));
    let reqs = a.requests.lock().unwrap().clone();
    // The secret goes to the token endpoint only, the token to Resource
    // Manager only.
    assert!(
        reqs[0]
            .1
            .starts_with(&format!("/{TENANT}/oauth2/v2.0/token"))
            && reqs[0].3.contains(SECRET)
    );
    assert!(reqs[1..]
        .iter()
        .all(|r| !r.3.contains(SECRET) && r.2 == format!("Bearer {ARM_TOKEN}")));
    let put = reqs
        .iter()
        .find(|r| r.0 == "PUT")
        .expect("the image is created");
    assert!(
        put.1.starts_with(&id) && put.1.contains("api-version="),
        "{}",
        put.1
    );
    let body: serde_json::Value = serde_json::from_str(&put.3).unwrap();
    assert_eq!(body["location"], "westeurope");
    assert_eq!(body["properties"]["hyperVGeneration"], "V2");
    let disk = &body["properties"]["storageProfile"]["osDisk"];
    assert_eq!(
        (
            disk["osType"].as_str(),
            disk["osState"].as_str(),
            disk["blobUri"].as_str()
        ),
        (Some("Linux"), Some("Generalized"), Some(BLOB))
    );
    assert_eq!(body["tags"]["kiln_sha256"], sha.as_str());
    assert_eq!(body["tags"]["kiln_image"], "generic");
    // It was waited for: read again after the PUT until Succeeded.
    let after_put = reqs
        .iter()
        .skip_while(|r| r.0 != "PUT")
        .filter(|r| r.0 == "GET")
        .count();
    assert!(after_put >= 2, "{reqs:?}");

    // Again: found, nothing made.
    let n = a.requests.lock().unwrap().len();
    let again = run(&a, SECRET, "rg-images", "westeurope", &sha, false).unwrap();
    assert_eq!((again.how, again.id.as_str()), ("reused", id.as_str()));
    assert!(!methods(&a)[n..].contains(&"PUT".to_string()));

    // The name with another disk: refused, then replaced.
    let other = "cd".repeat(32);
    let e = run(&a, SECRET, "rg-images", "westeurope", &other, false).unwrap_err();
    assert!(
        e.to_string().contains("already used") && e.to_string().contains(&sha),
        "{e}"
    );
    assert!(e.hint().unwrap().contains("--replace"));
    let n = a.requests.lock().unwrap().len();
    let r = run(&a, SECRET, "rg-images", "westeurope", &other, true).unwrap();
    assert_eq!(r.how, "created");
    let m = methods(&a)[n..].to_vec();
    let (del, put) = (
        m.iter().position(|x| x == "DELETE"),
        m.iter().position(|x| x == "PUT"),
    );
    assert!(del.is_some() && del < put, "{m:?}");

    // A wrong secret, no subscription: named, the secret not shown.
    let e = run(
        &a,
        "wrong-secret-value",
        "rg-images",
        "westeurope",
        &sha,
        false,
    )
    .unwrap_err();
    let shown = format!("{e} {}", e.hint().unwrap_or_default());
    assert!(
        matches!(e, CloudError::Credentials { .. }) && shown.contains("AZURE_CLIENT_SECRET"),
        "{shown}"
    );
    assert!(
        !shown.contains("wrong-secret-value") && !shown.contains(ARM_TOKEN),
        "{shown}"
    );
    let e = with_env(&env(&a, SECRET, None), || {
        publish(
            &ImageRecord {
                resource_group: "rg-images".into(),
                location: "westeurope".into(),
            },
            "x",
            BLOB,
            &sha,
            &[],
            false,
            Duration::from_secs(5),
            &|_| {},
        )
    })
    .unwrap_err();
    assert!(e.to_string().contains("AZURE_SUBSCRIPTION_ID"), "{e}");

    // A region that does not exist, a resource group that does not.
    let e = run(&a, SECRET, "rg-new", "atlantis", &sha, false).unwrap_err();
    assert!(
        e.to_string().contains("`atlantis` is not a region") && e.hint().is_some(),
        "{e}"
    );
    let e = run(&a, SECRET, "missing-rg", "westeurope", &sha, false).unwrap_err();
    assert!(
        e.to_string().contains("no resource group `missing-rg`"),
        "{e}"
    );
}
