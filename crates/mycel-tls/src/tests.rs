use std::os::unix::fs::PermissionsExt;

use super::*;

fn ca() -> (tempfile::TempDir, Ca) {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::load_or_create(dir.path()).unwrap();
    (dir, ca)
}

fn local() -> Vec<String> {
    vec!["127.0.0.1".into(), "localhost".into()]
}

/// Serves "ok" over TLS with `identity`, answering only clients from `client_ca` when
/// given; returns the URL.
async fn server(identity: &Identity, client_ca: Option<&str>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "https://127.0.0.1:{}/",
        listener.local_addr().unwrap().port()
    );
    let app = axum::Router::new().route("/", axum::routing::get(|| async { "ok" }));
    let tls = server_config(identity, client_ca).unwrap();
    tokio::spawn(serve(listener, app, Some(tls), std::future::pending()));
    url
}

async fn get(url: &str, ca_pem: &str, identity: Option<&Identity>) -> Result<String, String> {
    let client = reqwest::Client::builder()
        .use_preconfigured_tls(client_config(ca_pem, identity).unwrap())
        .build()
        .unwrap();
    match client.get(url).send().await {
        Ok(response) => response.text().await.map_err(|e| e.to_string()),
        Err(e) => Err(format!("{e:?}")),
    }
}

#[test]
fn the_ca_is_made_once_and_its_key_is_private() {
    let (dir, first) = ca();
    let again = Ca::load_or_create(dir.path()).unwrap();
    assert_eq!(first.fingerprint(), again.fingerprint());
    assert_eq!(first.fingerprint(), fingerprint(first.cert_pem()).unwrap());
    assert_eq!(first.fingerprint().len(), 64);
    let mode = std::fs::metadata(dir.path().join(CA_KEY_FILE))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn a_broken_ca_file_is_an_error_naming_it() {
    let (dir, _) = ca();
    std::fs::write(dir.path().join(CA_FILE), "not a certificate").unwrap();
    let e = Ca::load_or_create(dir.path()).err().unwrap().to_string();
    assert!(e.contains("ca.pem"), "{e}");
}

#[test]
fn a_request_is_signed_for_its_names_and_key_with_the_cas_subject() {
    let (_dir, ca) = ca();
    let (key, csr) = request("someone-else", &["10.0.0.7".into(), "edge-7".into()]).unwrap();
    let pem = ca.sign_request(Kind::Node, "edge-7", &csr).unwrap();
    let der = CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    assert_eq!(
        cert.subject()
            .iter_common_name()
            .next()
            .unwrap()
            .as_str()
            .unwrap(),
        "edge-7"
    );
    let sans = cert.subject_alternative_name().unwrap().unwrap().value;
    assert_eq!(sans.general_names.len(), 2);
    assert_eq!(
        cert.public_key().raw,
        key.subject_public_key_info().as_slice()
    );
    let eku = cert.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && !eku.client_auth);
}

#[test]
fn garbage_is_not_a_signing_request() {
    let (_dir, ca) = ca();
    let e = ca
        .sign_request(Kind::Node, "n", "hello")
        .unwrap_err()
        .to_string();
    assert!(e.contains("not a valid signing request"), "{e}");
}

#[tokio::test]
async fn a_node_answers_fleet_clients_only() {
    let (_dir, ca) = ca();
    let node = ca.own_identity(Kind::Node, "edge-1", &local()).unwrap();
    let url = server(&node, Some(ca.cert_pem())).await;

    let fleet = ca.own_identity(Kind::Fleet, "gateway", &local()).unwrap();
    assert_eq!(get(&url, ca.cert_pem(), Some(&fleet)).await.unwrap(), "ok");

    // Another node's certificate is from the right CA but may not act as a client.
    let other_node = ca.own_identity(Kind::Node, "edge-2", &local()).unwrap();
    get(&url, ca.cert_pem(), Some(&other_node))
        .await
        .unwrap_err();
    // No certificate at all.
    get(&url, ca.cert_pem(), None).await.unwrap_err();
    // A fleet certificate from a CA made elsewhere.
    let (_elsewhere, forger) = super::tests::ca();
    let forged = forger
        .own_identity(Kind::Fleet, "gateway", &local())
        .unwrap();
    get(&url, ca.cert_pem(), Some(&forged)).await.unwrap_err();
}

#[tokio::test]
async fn a_client_refuses_a_server_from_another_ca_or_for_another_name() {
    let (_dir, ca) = ca();
    let (_elsewhere, other) = super::tests::ca();
    let impostor = other.own_identity(Kind::Fleet, "cp", &local()).unwrap();
    let url = server(&impostor, None).await;
    let e = get(&url, ca.cert_pem(), None).await.unwrap_err();
    assert!(e.contains("UnknownIssuer"), "{e}");

    let elsewhere = ca
        .own_identity(Kind::Fleet, "cp", &["10.9.9.9".into()])
        .unwrap();
    let url = server(&elsewhere, None).await;
    let e = get(&url, ca.cert_pem(), None).await.unwrap_err();
    assert!(e.contains("NotValidForName"), "{e}");
}

#[tokio::test]
async fn plain_http_to_a_tls_port_gets_no_answer() {
    let (_dir, ca) = ca();
    let identity = ca.own_identity(Kind::Fleet, "cp", &local()).unwrap();
    let url = server(&identity, None).await.replace("https://", "http://");
    let response = reqwest::get(&url).await;
    assert!(
        response.as_ref().map_or(true, |r| !r.status().is_success()),
        "{response:?}"
    );
}

#[test]
fn names_for_a_wildcard_bind_are_this_machines() {
    let names = names_for(&["0.0.0.0".into(), "[::]".into()]);
    assert!(names.contains(&"127.0.0.1".to_owned()));
    assert!(!names.iter().any(|n| n == "0.0.0.0" || n == "::"));
    let names = names_for(&["10.0.0.7".into(), "[fd00::7]".into()]);
    assert_eq!(&names[..2], ["10.0.0.7", "fd00::7"]);
}
