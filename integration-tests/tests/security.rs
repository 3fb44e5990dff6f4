//! Invariant 3 (no identity can act as another), end to end: connections without a
//! certificate, with a certificate from another CA, agent certificates calling the operator
//! API, and an agent attaching under another agent's name are all refused with a clear error,
//! and the genuine sessions carry on undisturbed.

use std::sync::Arc;
use std::time::Duration;

use fleet_common::tls::{TlsMaterial, connect_coordinator};
use fleet_integration_tests::{Cluster, CoordinatorOpts, Pki, eventually, serial};
use fleet_proto::v1::agent_message::Msg;
use fleet_proto::v1::agent_service_client::AgentServiceClient;
use fleet_proto::v1::{AgentMessage, GetStatusRequest, Hello};

/// The (boot id, newest seq) of every host: a disturbed session would change the boot id's
/// progress or drop the host offline.
async fn progress(c: &Cluster) -> Vec<(String, bool, i64)> {
    c.hosts().await.unwrap().into_iter().map(|h| (h.name, h.online, h.last_report_ms)).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn impostors_are_refused_and_genuine_sessions_continue() {
    let _g = serial().await;
    let mut c = Cluster::new(&["main-pc", "pc2"]);
    c.start_coordinator(CoordinatorOpts::default()).await;
    c.start_agent("main-pc", Duration::from_millis(200));
    c.start_agent("pc2", Duration::from_millis(200));
    c.wait_online(&["main-pc", "pc2"], Duration::from_secs(10)).await;
    let before = progress(&c).await;
    let sessions_before = c.fleetctl(&["status", "-o", "json"]);
    let sessions_before: serde_json::Value = serde_json::from_slice(&sessions_before.stdout).unwrap();
    assert_eq!(sessions_before["sessions"], 2);

    // 1. A client with no certificate: the handshake is refused and the coordinator says why.
    let roots = {
        let pem = std::fs::read(c.pki.dir.join("ca.pem")).unwrap();
        let mut store = rustls::RootCertStore::empty();
        use rustls::pki_types::pem::PemObject;
        for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
            store.add(cert.unwrap()).unwrap();
        }
        store
    };
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots.clone())
        .with_no_client_auth();
    let port: u16 = c.addr.rsplit(':').next().unwrap().parse().unwrap();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    // TLS 1.3 reports a refused client certificate on the first read after the handshake.
    let refused = match connector.connect(name, tcp).await {
        Err(_) => true,
        Ok(mut s) => {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let _ = s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await;
            let mut buf = [0u8; 64];
            !matches!(tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await, Ok(Ok(n)) if n > 0)
        }
    };
    assert!(refused, "a client without a certificate got a working connection");
    let log = c.coordinator.as_ref().unwrap();
    eventually(Duration::from_secs(5), "the coordinator to log the missing certificate", || async {
        log.log_text().contains("the client presented no certificate").then_some(())
    })
    .await;

    // 1b. TLS 1.2, even with a valid certificate, is refused.
    let ops_files = c.pki.files("ops");
    let chain: Vec<_> = {
        use rustls::pki_types::pem::PemObject;
        rustls::pki_types::CertificateDer::pem_file_iter(&ops_files.cert).unwrap().map(|c| c.unwrap()).collect()
    };
    let key = {
        use rustls::pki_types::pem::PemObject;
        rustls::pki_types::PrivateKeyDer::from_pem_file(&ops_files.key).unwrap()
    };
    let roots12 = {
        let pem = std::fs::read(&ops_files.ca).unwrap();
        let mut store = rustls::RootCertStore::empty();
        use rustls::pki_types::pem::PemObject;
        for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
            store.add(cert.unwrap()).unwrap();
        }
        store
    };
    let tls12 = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_root_certificates(roots12)
        .with_client_auth_cert(chain, key)
        .unwrap();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let r = tokio_rustls::TlsConnector::from(Arc::new(tls12)).connect(name, tcp).await;
    assert!(r.is_err(), "a TLS 1.2 handshake succeeded");

    // 2. A certificate from another CA: fleetctl fails with exit 3 and a reason.
    let other = Pki::new(&c.dir().join("other-pki"));
    other.issue("operator", "mallory");
    let f = other.files("mallory");
    let out = fleet_integration_tests::run(
        std::process::Command::new(fleet_integration_tests::bin("fleetctl"))
            .args(["hosts", "--addr", &c.addr, "--ca"])
            .arg(&c.pki.files("ops").ca)
            .arg("--cert")
            .arg(&f.cert)
            .arg("--key")
            .arg(&f.key),
    );
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
    eventually(Duration::from_secs(5), "the coordinator to log the foreign certificate", || async {
        log.log_text().contains("not signed by this coordinator's CA").then_some(())
    })
    .await;

    // 2b. The refused client reads why, even when it wrote after its half of the handshake (as
    // an HTTP/2 client does at once): the coordinator drains such data before it closes, since
    // closing with unread data resets the connection and the client's next write would fail
    // before it reads the alert.
    let foreign = {
        use rustls::pki_types::pem::PemObject;
        let chain: Vec<_> =
            rustls::pki_types::CertificateDer::pem_file_iter(&f.cert).unwrap().map(|c| c.unwrap()).collect();
        let key = rustls::pki_types::PrivateKeyDer::from_pem_file(&f.key).unwrap();
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .unwrap()
    };
    let refusals = || log.log_text().matches("not signed by this coordinator's CA").count();
    let before_refusals = refusals();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut s = tokio_rustls::TlsConnector::from(Arc::new(foreign)).connect(name, tcp).await.unwrap();
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await.unwrap();
        s.flush().await.unwrap();
        eventually(Duration::from_secs(5), "the coordinator to refuse the foreign certificate", || async {
            (refusals() > before_refusals).then_some(())
        })
        .await;
        s.write_all(&[0u8; 64]).await.expect("a write after the refusal");
        s.flush().await.expect("a write after the refusal");
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await.expect("an answer");
        let err = read.expect_err("a refused client read data");
        assert!(err.to_string().contains("alert"), "the client did not read the alert: {err}");
    }

    // 3. An agent certificate calling the operator API.
    let out = c.fleetctl_as("pc2", &["hosts"]);
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("spiffe://fleet.local/agent/pc2") && err.contains("operator certificate"), "{err}");
    let denied = c.control_as("main-pc").await.get_status(GetStatusRequest {}).await.unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);

    // 4. pc2's certificate attaching as main-pc.
    let tls = TlsMaterial::load(&c.pki.files("pc2")).unwrap();
    let ch = connect_coordinator(&c.addr, &tls).await.unwrap();
    let hello = Hello {
        name: "main-pc".into(),
        version: "0.1.0".into(),
        boot_id: 42,
        report_interval_ms: 200,
        ..Default::default()
    };
    let stream = tokio_stream::iter(vec![AgentMessage { msg: Some(Msg::Hello(hello)) }]);
    let err = AgentServiceClient::new(ch).attach(stream).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    assert_eq!(err.message(), "certificate names pc2 but the agent calls itself main-pc");
    eventually(Duration::from_secs(5), "the coordinator to log the impersonation", || async {
        log.log_text().contains("certificate names pc2 but the agent calls itself main-pc").then_some(())
    })
    .await;

    // A Hello whose labels would reach operators' terminals as escape sequences is refused.
    let tls = TlsMaterial::load(&c.pki.files("pc2")).unwrap();
    let ch = connect_coordinator(&c.addr, &tls).await.unwrap();
    let mut hello = Hello { name: "pc2".into(), version: "0.1.0".into(), boot_id: 43, ..Default::default() };
    hello.labels.insert("role".into(), "gpu\x1b]0;owned\x07\x1b[2J".into());
    let err = AgentServiceClient::new(ch)
        .attach(tokio_stream::iter(vec![AgentMessage { msg: Some(Msg::Hello(hello.clone())) }]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("label role") && err.message().contains("control characters"), "{err}");
    hello.labels = (0..40).map(|i| (format!("l{i}"), "x".to_string())).collect();
    let ch = connect_coordinator(&c.addr, &tls).await.unwrap();
    let err = AgentServiceClient::new(ch)
        .attach(tokio_stream::iter(vec![AgentMessage { msg: Some(Msg::Hello(hello)) }]))
        .await
        .unwrap_err();
    assert!(err.message().contains("40 labels; at most 32"), "{err}");

    // An operator certificate cannot attach as an agent either.
    let tls = TlsMaterial::load(&c.pki.files("ops")).unwrap();
    let ch = connect_coordinator(&c.addr, &tls).await.unwrap();
    let hello = Hello { name: "ops".into(), boot_id: 1, ..Default::default() };
    let err = AgentServiceClient::new(ch)
        .attach(tokio_stream::iter(vec![AgentMessage { msg: Some(Msg::Hello(hello)) }]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);

    // The genuine agents never noticed: still online, the same sessions, still reporting.
    let after = progress(&c).await;
    for ((name, online, last), (name2, online2, last2)) in before.iter().zip(after.iter()) {
        assert_eq!(name, name2);
        assert!(*online && *online2, "{name} went offline");
        assert!(last2 >= last);
    }
    let out = c.fleetctl(&["status", "-o", "json"]);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["sessions"], 2);
    let (_, metrics) = c.http_get("/metrics").await;
    let m = fleet_integration_tests::parse_metrics(&metrics);
    assert_eq!(m["fleet_coordinator_sessions_opened_total"], 2.0, "a genuine session was replaced");
    assert!(m["fleet_coordinator_tls_handshake_failures_total"] >= 2.0);
    assert!(m["fleet_coordinator_control_denied_total"] >= 2.0);
    for name in ["main-pc", "pc2"] {
        assert!(c.agent(name).log_text().matches("attached to the coordinator").count() == 1, "{name} reconnected");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_refuses_to_start_with_another_agents_certificate() {
    let _g = serial().await;
    let mut c = Cluster::new(&["main-pc", "pc2"]);
    c.addr = "https://127.0.0.1:7443".into();
    // main-pc's config pointing at pc2's certificate.
    let cfg = c.agent_config("main-pc", Duration::from_secs(1), "");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("main-pc.pem", "pc2.pem")
        .replace("main-pc-key.pem", "pc2-key.pem");
    std::fs::write(&cfg, text).unwrap();
    let out = fleet_integration_tests::run(
        std::process::Command::new(fleet_integration_tests::bin("fleet-agent")).args(["run", "--config"]).arg(&cfg),
    );
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("carries identity spiffe://fleet.local/agent/pc2, but this agent is configured as \"main-pc\""),
        "{err}"
    );
}

/// Two machines with pc2's certificate: the first keeps its session, the second is refused
/// with a loud error on both sides and counted, instead of the two replacing each other; once
/// the first is gone the second attaches.
#[tokio::test(flavor = "multi_thread")]
async fn a_second_machine_with_the_same_identity_is_refused_not_flapping() {
    let _g = serial().await;
    let mut c = Cluster::new(&["pc2"]);
    c.start_coordinator(CoordinatorOpts { offline_after: Duration::from_secs(10), ..Default::default() }).await;
    c.start_agent("pc2", Duration::from_millis(200));
    c.wait_online(&["pc2"], Duration::from_secs(10)).await;
    let first = c.hosts().await.unwrap()[0].peer_address.clone();

    // The clone: the same certificate, its own data directory (so another boot id).
    let cfg = c.agent_config("pc2", Duration::from_millis(200), "");
    let clone_cfg = c.dir().join("pc2-clone.toml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    let text =
        text.replace(&c.dir().join("pc2").display().to_string(), &c.dir().join("pc2-clone").display().to_string());
    std::fs::write(&clone_cfg, text).unwrap();
    let mut clone = fleet_integration_tests::Proc::spawn(
        "pc2-clone",
        &fleet_integration_tests::bin("fleet-agent"),
        &["run", "--config", clone_cfg.to_str().unwrap()],
        &c.dir().join("logs/pc2-clone.log"),
    );
    eventually(Duration::from_secs(15), "the clone to be refused", || async {
        clone.log_text().contains("its identity is in use by another machine").then_some(())
    })
    .await;
    let coordinator = c.coordinator.as_ref().unwrap();
    assert!(
        coordinator.log_text().contains("identity conflict: pc2 is already attached from"),
        "{}",
        coordinator.log_text()
    );
    // The first machine kept its session the whole time: no flapping.
    for _ in 0..10 {
        let h = c.hosts().await.unwrap().remove(0);
        assert!(h.online && h.peer_address == first, "pc2 moved to {} ({})", h.peer_address, h.online);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(coordinator.log_text().matches("agent online host=pc2").count(), 1, "{}", coordinator.log_text());
    let (_, text) = c.http_get("/metrics").await;
    let m = fleet_integration_tests::parse_metrics(&text);
    assert!(m["fleet_coordinator_identity_conflicts_total"] >= 1.0);

    // The first machine goes away for good: the clone attaches on its next attempt.
    c.agent("pc2").kill9();
    eventually(Duration::from_secs(45), "the clone to take over pc2", || async {
        let h = c.hosts().await?.into_iter().next()?;
        (h.online && h.peer_address != first).then_some(())
    })
    .await;
    clone.kill9();
}

/// The other half of invariant 3: a server that presents a certificate of the fleet's CA but
/// not the coordinator identity (an operator's, with the right address in it) is refused by
/// fleetctl and by agents, before they send anything.
#[tokio::test(flavor = "multi_thread")]
async fn a_server_without_the_coordinator_identity_is_refused_by_its_clients() {
    let _g = serial().await;
    let c = Cluster::new(&["pc2"]);
    // Signed by the fleet's CA, good for serving TLS at 127.0.0.1, but an operator's identity.
    let ca_key = rcgen::KeyPair::from_pem(&std::fs::read_to_string(c.pki.dir.join("ca-key.pem")).unwrap()).unwrap();
    let issuer =
        rcgen::Issuer::from_ca_cert_pem(&std::fs::read_to_string(c.pki.dir.join("ca.pem")).unwrap(), ca_key).unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = vec![
        rcgen::SanType::URI("spiffe://fleet.local/operator/mallory".to_string().try_into().unwrap()),
        rcgen::SanType::IpAddress("127.0.0.1".parse().unwrap()),
    ];
    params.extended_key_usages =
        vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth, rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    std::fs::write(c.pki.dir.join("mallory.pem"), cert.pem()).unwrap();
    std::fs::write(c.pki.dir.join("mallory-key.pem"), key.serialize_pem()).unwrap();
    let tls = TlsMaterial::load(&c.pki.files("mallory")).unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.server_config().unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = format!("https://{}", listener.local_addr().unwrap());
    let got_bytes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = got_bytes.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else { return };
            let acceptor = acceptor.clone();
            let seen = seen.clone();
            tokio::spawn(async move {
                if let Ok(mut s) = acceptor.accept(tcp).await {
                    use tokio::io::AsyncReadExt;
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        seen.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            });
        }
    });
    let out = c.fleetctl(&["status", "--addr", &addr]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("the server presented identity spiffe://fleet.local/operator/mallory, expected spiffe://fleet.local/coordinator"), "{err}");
    let agent_tls = TlsMaterial::load(&c.pki.files("pc2")).unwrap();
    let e = connect_coordinator(&addr, &agent_tls).await.unwrap_err();
    assert!(e.to_string().contains("expected spiffe://fleet.local/coordinator"), "{e}");
    assert_eq!(got_bytes.load(std::sync::atomic::Ordering::Relaxed), 0, "a request was sent to the impostor");
}
