use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

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
    tokio::spawn(serve(
        listener,
        app,
        Some(tls),
        Limits::default(),
        std::future::pending(),
    ));
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

/// A plain-HTTP server with a short idle limit, echoing request bodies; its address.
async fn plain(idle: Duration) -> std::net::SocketAddr {
    plain_with(Limits {
        idle,
        ..Limits::default()
    })
    .await
}

/// A plain-HTTP server echoing request bodies under `limits`; its address.
async fn plain_with(limits: Limits) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().route(
        "/",
        axum::routing::post(|body: axum::body::Bytes| async move { body }),
    );
    tokio::spawn(serve(listener, app, None, limits, std::future::pending()));
    addr
}

/// Reads until the server closes the connection; what it sent, or `None` if it kept
/// the connection open past `patience`.
async fn until_closed(stream: &mut tokio::net::TcpStream, patience: Duration) -> Option<String> {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    tokio::time::timeout(patience, stream.read_to_end(&mut got))
        .await
        .ok()?
        .ok()?;
    Some(String::from_utf8_lossy(&got).into_owned())
}

#[tokio::test]
async fn silent_slow_and_stalled_clients_are_let_go() {
    use tokio::io::AsyncWriteExt;
    let idle = Duration::from_millis(300);
    let addr = plain(idle).await;
    let patience = Duration::from_secs(5);

    // Connects and says nothing.
    let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
    assert!(until_closed(&mut silent, patience).await.is_some());

    // Half a request head, then nothing.
    let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"POST / HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    assert!(until_closed(&mut slow, patience).await.is_some());

    // A body that promises 100 bytes and stops after 5: answered with an error, closed.
    let mut stalled = tokio::net::TcpStream::connect(addr).await.unwrap();
    stalled
        .write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nhello")
        .await
        .unwrap();
    let answer = until_closed(&mut stalled, patience).await.unwrap();
    assert!(!answer.starts_with("HTTP/1.1 200"), "{answer}");

    // A keep-alive connection that answered once and then idles is closed too...
    let mut idler = tokio::net::TcpStream::connect(addr).await.unwrap();
    idler
        .write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi")
        .await
        .unwrap();
    let answer = until_closed(&mut idler, patience).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    // ...while a client that keeps talking is served.
    let mut busy = tokio::net::TcpStream::connect(addr).await.unwrap();
    for _ in 0..3 {
        busy.write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi")
            .await
            .unwrap();
        tokio::time::sleep(idle / 3).await;
    }
    busy.write_all(
        b"POST / HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 2\r\n\r\nhi",
    )
    .await
    .unwrap();
    let answers = until_closed(&mut busy, patience).await.unwrap();
    assert_eq!(answers.matches("HTTP/1.1 200").count(), 4, "{answers}");
}

#[tokio::test]
async fn connections_past_the_limit_are_closed_at_once() {
    use tokio::io::AsyncWriteExt;
    let addr = plain_with(Limits {
        idle: Duration::from_secs(30),
        connections: 2,
    })
    .await;
    let patience = Duration::from_secs(5);
    let hello = b"POST / HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 2\r\n\r\nhi";

    // Two clients hold their connections, saying nothing.
    let first = tokio::net::TcpStream::connect(addr).await.unwrap();
    let _second = tokio::net::TcpStream::connect(addr).await.unwrap();
    // Give the server time to take both before the third arrives.
    tokio::time::sleep(Duration::from_millis(200)).await;

    // A third is closed unanswered, long before the idle limit would close anything.
    let mut third = tokio::net::TcpStream::connect(addr).await.unwrap();
    assert_eq!(
        until_closed(&mut third, patience).await.as_deref(),
        Some("")
    );

    // Once one of the two leaves, a new client is served.
    drop(first);
    let mut served = None;
    for _ in 0..50 {
        let mut next = tokio::net::TcpStream::connect(addr).await.unwrap();
        let _ = next.write_all(hello).await;
        let answer = until_closed(&mut next, patience).await.unwrap_or_default();
        if answer.starts_with("HTTP/1.1 200") {
            served = Some(answer);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        served.is_some(),
        "no client served after a connection closed"
    );
}
