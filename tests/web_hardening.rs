//! Issue 19's web items against the call-center example as a process: cross-site writes
//! refused (and the session survives), the `__Host-` session cookie, campaigns behind a login
//! with a keyset cursor, secrets never echoed at start-up, no public read-your-writes secret,
//! and `x-user-id` ignored unless development mode says otherwise.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::call_center::*;

/// Runs the example with `envs` on a free port; it must refuse to start: returns its stderr and
/// stdout once it has exited with a failure (killed, and the test failed, if it is still
/// running after 10 s).
fn refused_start(envs: &[(&str, &str)]) -> (String, String) {
    let port = welcomedly_testkit::free_port().unwrap();
    let mut child = Command::new(example_binary())
        .env_clear()
        .env("PORT", port.to_string())
        .env("RUST_LOG", "warn")
        .envs(envs.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the example started instead of refusing to: {envs:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(!status.success(), "{envs:?}");
    let mut stderr = String::new();
    let mut stdout = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    (stderr, stdout)
}

fn json(r: &Response) -> serde_json::Value {
    serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("{e}: {}", r.body))
}

fn me(app: &Instance, cookie: &str) -> u16 {
    app.request_with("GET", "/api/me", &[("cookie", cookie)], "")
        .status
}

/// A page of another site posts a form to `/auth/logout` with the user's cookie (what
/// `SameSite=Lax` lets through from a sibling subdomain, and any browser without it): 403, and
/// the session is still there. The site's own page, a current browser or an old one, still
/// logs out.
#[test]
fn a_cross_site_logout_is_refused_and_the_session_survives() {
    let app = Instance::start(&[]);
    let cookie = log_in(&app, "agent");
    let form = ("content-type", "application/x-www-form-urlencoded");
    for hostile in [
        // A current browser says where the request comes from.
        vec![
            ("cookie", cookie.as_str()),
            ("origin", "https://evil.example"),
            ("sec-fetch-site", "cross-site"),
            form,
        ],
        // A sibling subdomain is same-site, but not same-origin.
        vec![
            ("cookie", cookie.as_str()),
            ("origin", "https://evil.localhost"),
            ("sec-fetch-site", "same-site"),
            form,
        ],
        // An older browser: only Origin, which is not this host.
        vec![
            ("cookie", cookie.as_str()),
            ("origin", "https://evil.example"),
            form,
        ],
    ] {
        let r = app.request_with("POST", "/auth/logout?everywhere=true", &hostile, "");
        assert_eq!(r.status, 403, "{hostile:?}: {}", r.body);
        assert_eq!(r.header("content-type"), Some("application/problem+json"));
        assert!(
            json(&r)["detail"]
                .as_str()
                .unwrap()
                .contains("cross-origin")
        );
        assert!(r.header("set-cookie").is_none(), "{:?}", r.headers);
        assert_eq!(me(&app, &cookie), 200, "the session survived {hostile:?}");
    }
    // Safe methods are never refused.
    let r = app.request_with(
        "GET",
        "/api/me",
        &[
            ("cookie", cookie.as_str()),
            ("origin", "https://evil.example"),
            ("sec-fetch-site", "cross-site"),
        ],
        "",
    );
    assert_eq!(r.status, 200);

    // Same origin: an old browser whose Origin matches the Host (the helper sends
    // `host: localhost`), then a current one.
    let own = app.request_with(
        "PUT",
        "/api/agents/me/status",
        &[
            ("cookie", cookie.as_str()),
            ("origin", "http://localhost"),
            ("content-type", "application/json"),
        ],
        r#"{"status":"available"}"#,
    );
    assert_eq!(own.status, 200, "{}", own.body);
    let out = app.request_with(
        "POST",
        "/auth/logout",
        &[
            ("cookie", cookie.as_str()),
            ("origin", "http://localhost"),
            ("sec-fetch-site", "same-origin"),
        ],
        "",
    );
    assert_eq!(out.status, 200, "{}", out.body);
    assert_eq!(me(&app, &cookie), 401);
    assert!(app.terminate().success());
}

/// An origin listed in `WELCOMEDLY_TRUSTED_ORIGINS` may post from another host.
#[test]
fn a_trusted_origin_may_post_cross_origin() {
    let app = Instance::start(&[(
        "WELCOMEDLY_TRUSTED_ORIGINS",
        "https://admin.example.com, http://localhost:5173".to_owned(),
    )]);
    let cookie = log_in(&app, "agent");
    let r = app.request_with(
        "POST",
        "/auth/logout",
        &[
            ("cookie", cookie.as_str()),
            ("origin", "https://admin.example.com"),
            ("sec-fetch-site", "cross-site"),
        ],
        "",
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(app.terminate().success());

    let (stderr, _) =
        refused_start(&[("WELCOMEDLY_TRUSTED_ORIGINS", "https://admin.example.com/")]);
    assert!(stderr.contains("WELCOMEDLY_TRUSTED_ORIGINS"), "{stderr}");
}

/// Over HTTPS settings (the default `Secure`, path `/`, no domain) the session cookie is
/// `__Host-wd_session`: a sibling subdomain cannot plant one. Two session cookies make the
/// request anonymous, but the reply no longer deletes the legitimate one.
#[test]
fn the_session_cookie_is_host_prefixed_and_duplicates_delete_nothing() {
    let app = Instance::start(&[]);
    let login = app.request(
        "POST",
        "/auth/login",
        Some(r#"{"username":"agent","password":"welcomedly-demo"}"#),
    );
    assert_eq!(login.status, 200, "{}", login.body);
    let set = login.header("set-cookie").unwrap();
    assert!(set.starts_with("__Host-wd_session="), "{set}");
    assert!(set.contains("Secure") && set.contains("Path=/"), "{set}");
    assert!(!set.contains("Domain"), "{set}");
    let cookie = session_cookie(&login);

    // A cookie of the old name (what a sibling subdomain can still plant) is not read at all.
    let planted = "wd_session=00112233445566778899aabbccddeeff";
    let both = format!("{planted}; {cookie}");
    assert_eq!(me(&app, &both), 200);

    // Two of the prefixed name (only a non-browser client can send that): anonymous, and no
    // Set-Cookie that would delete the real one.
    let twice = format!("__Host-wd_session=00112233445566778899aabbccddeeff; {cookie}");
    let r = app.request_with("GET", "/api/me", &[("cookie", &twice)], "");
    assert_eq!(r.status, 401);
    assert!(r.header("set-cookie").is_none(), "{:?}", r.headers);
    assert_eq!(me(&app, &cookie), 200);

    // Plain-HTTP development keeps the bare name (browsers refuse __Host- without Secure).
    let dev = Instance::start(&[("WELCOMEDLY_SESSION_SECURE", "false".to_owned())]);
    let login = dev.request(
        "POST",
        "/auth/login",
        Some(r#"{"username":"agent","password":"welcomedly-demo"}"#),
    );
    assert!(session_cookie(&login).starts_with("wd_session="));
    assert!(app.terminate().success());
    assert!(dev.terminate().success());
}

/// Campaigns: 401 without a login, 403 for an agent's write, 201 for a supervisor's; the list
/// comes a page at a time, newest first, each page's `next` the cursor of the following one.
#[test]
fn campaigns_need_a_login_writes_a_supervisor_and_the_list_pages_by_cursor() {
    let app = Instance::start(&[]);
    let body = r#"{"name":"spring"}"#;
    let anonymous = app.request("POST", "/api/campaigns", Some(body));
    assert_eq!(anonymous.status, 401, "{}", anonymous.body);
    assert_eq!(
        anonymous.header("content-type"),
        Some("application/problem+json")
    );
    for path in ["/api/campaigns", "/api/campaigns/1", "/api/stats"] {
        assert_eq!(app.request("GET", path, None).status, 401, "{path}");
    }

    let agent = log_in(&app, "agent");
    fn json_with(cookie: &str) -> [(&str, &str); 2] {
        [("cookie", cookie), ("content-type", "application/json")]
    }
    let r = app.request_with("POST", "/api/campaigns", &json_with(&agent), body);
    assert_eq!(r.status, 403, "{}", r.body);
    let r = app.request_with("GET", "/api/campaigns", &[("cookie", &agent)], "");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(json(&r)["campaigns"].as_array().unwrap().len(), 0);

    let supervisor = log_in(&app, "supervisor");
    let mut created = Vec::new();
    for i in 0..7 {
        let r = app.request_with(
            "POST",
            "/api/campaigns",
            &json_with(&supervisor),
            &format!(r#"{{"name":"campaign-{i}"}}"#),
        );
        assert_eq!(r.status, 201, "{}", r.body);
        created.push(json(&r)["id"].as_i64().unwrap());
    }

    // Pages of 3 by the cursor: 3 + 3 + 1, newest first, each campaign exactly once.
    let mut seen = Vec::new();
    let mut path = "/api/campaigns?limit=3".to_owned();
    let mut pages = 0;
    loop {
        let r = app.request_with("GET", &path, &[("cookie", &agent)], "");
        assert_eq!(r.status, 200, "{}", r.body);
        let page = json(&r);
        let rows = page["campaigns"].as_array().unwrap();
        assert!(rows.len() <= 3, "{page}");
        seen.extend(rows.iter().map(|c| c["id"].as_i64().unwrap()));
        pages += 1;
        match page["next"].as_str() {
            Some(cursor) => path = format!("/api/campaigns?limit=3&after={cursor}"),
            None => break,
        }
        // A campaign created between pages is newer than the cursor: it neither repeats a row
        // nor hides one.
        if pages == 1 {
            let r = app.request_with(
                "POST",
                "/api/campaigns",
                &json_with(&supervisor),
                r#"{"name":"late"}"#,
            );
            assert_eq!(r.status, 201);
        }
    }
    assert_eq!(pages, 3);
    created.reverse();
    assert_eq!(seen, created, "newest first, each once");

    // The default page holds them all (8 < 50); bad paging parameters are 400s that say why.
    let r = app.request_with("GET", "/api/campaigns", &[("cookie", &agent)], "");
    assert_eq!(json(&r)["campaigns"].as_array().unwrap().len(), 8);
    assert!(json(&r)["next"].is_null());
    for bad in ["limit=0", "limit=101", "limit=x", "after=abc", "after=-1"] {
        let r = app.request_with(
            "GET",
            &format!("/api/campaigns?{bad}"),
            &[("cookie", &agent)],
            "",
        );
        assert_eq!(r.status, 400, "{bad}: {}", r.body);
        assert_eq!(r.header("content-type"), Some("application/problem+json"));
    }
    assert!(app.terminate().success());
}

/// Too-short secrets stop the start with the variable named and its length, never its value;
/// one minimum (16 bytes) for every secret, the rate-limit one included.
#[test]
fn short_secrets_are_refused_at_start_without_being_echoed() {
    let (stderr, stdout) = refused_start(&[
        ("WELCOMEDLY_ADMIN_TOKEN", "hunter2-admin"),
        ("WELCOMEDLY_CONSISTENCY_SECRET", "hunter2-rw"),
        ("WELCOMEDLY_RATE_LIMIT_SECRET", "hunter2-rl"),
        (
            "WELCOMEDLY_SESSION_KEYS",
            "hunter2-session-key-long,hunter2",
        ),
    ]);
    for name in [
        "WELCOMEDLY_ADMIN_TOKEN (a secret of 13 bytes",
        "WELCOMEDLY_CONSISTENCY_SECRET (a secret of 10 bytes",
        "WELCOMEDLY_RATE_LIMIT_SECRET (a secret of 10 bytes",
        "WELCOMEDLY_SESSION_KEYS (a secret of",
    ] {
        assert!(stderr.contains(name), "{name} missing from: {stderr}");
    }
    assert!(
        !stderr.contains("hunter2") && !stdout.contains("hunter2"),
        "a secret was echoed: {stderr}{stdout}"
    );
}

/// With PostgreSQL but no consistency secret the instance refuses to start (read-your-writes
/// cookies signed with a public secret could be forged), and says what to set.
#[test]
fn a_database_without_a_consistency_secret_refuses_to_start() {
    let (stderr, _) =
        refused_start(&[("DATABASE_URL", "postgres://app:hunter2@127.0.0.1:1/calls")]);
    assert!(
        stderr.contains("WELCOMEDLY_CONSISTENCY_SECRET is not set while DATABASE_URL is"),
        "{stderr}"
    );
    assert!(stderr.contains("the same on every instance"), "{stderr}");
    assert!(!stderr.contains("hunter2"), "{stderr}");
}

/// `x-user-id` names nobody by default: an anonymous caller cannot pick the supervisor's flag
/// variants (nor open the flag-gated statistics); the logged-in supervisor can. Development
/// mode brings the header back for scripts.
#[test]
fn x_user_id_is_ignored_unless_development_mode_says_so() {
    let app = Instance::start(&[]);
    let who = [("x-user-id", "supervisor")];
    let flags = json(&app.request_with("GET", "/api/flags", &who, ""));
    assert!(flags["user"].is_null(), "{flags}");
    assert_ne!(
        flags["flags"]["campaign-stats"]["reason"],
        "TARGETING_MATCH"
    );
    assert_eq!(app.request_with("GET", "/api/stats", &who, "").status, 401);

    let supervisor = log_in(&app, "supervisor");
    let flags = json(&app.request_with("GET", "/api/flags", &[("cookie", &supervisor)], ""));
    assert_eq!(flags["user"], "supervisor");
    assert_eq!(flags["flags"]["campaign-stats"]["value"], true);
    let stats = app.request_with("GET", "/api/stats", &[("cookie", &supervisor)], "");
    assert_eq!(stats.status, 200, "{}", stats.body);
    // The session wins over the header.
    let flags = json(&app.request_with(
        "GET",
        "/api/flags",
        &[("cookie", &supervisor), ("x-user-id", "someone-else")],
        "",
    ));
    assert_eq!(flags["user"], "supervisor");
    assert!(app.terminate().success());

    let dev = Instance::start(&[("WELCOMEDLY_DEV_IDENTITY_HEADER", "true".to_owned())]);
    let flags = json(&dev.request_with("GET", "/api/flags", &who, ""));
    assert_eq!(flags["user"], "supervisor");
    assert_eq!(
        flags["flags"]["campaign-stats"]["reason"],
        "TARGETING_MATCH"
    );
    assert!(dev.terminate().success());
}
