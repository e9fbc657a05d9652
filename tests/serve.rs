//! `lookalike serve` as a user runs it, over real HTTP on a loopback port: the API and the page,
//! the images of a folder index (and every path that must not reach a file), new segments while
//! it runs, a graceful stop; then the page itself in a real headless Chromium. Needs the imported
//! model (scripts/test.sh imports it) and, for the browser test, Debian's `chromium` and
//! `chromium-driver` (scripts/test.sh installs them where it can).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;
use testkit::cli::ok;
use testkit::http::{get, request};
use testkit::lookalike;
use testkit::serve::{photo_folder, Server};
use testkit::webdriver::{find_browser, Browser, ENTER, TAB};

const BIN: &str = env!("CARGO_BIN_EXE_lookalike");

/// A key with a space and a non-ASCII letter, to check that result URLs are encoded.
const ODD_KEY: &str = "drinks/café au lait.jpg";

/// `dir/photos` (the 12 test photos, [`ODD_KEY`], a text file, and beside the folder a file
/// that must never be served), indexed into `dir/.lookalike/index`. Returns the indexed keys.
fn indexed_photos(dir: &Path) -> Vec<String> {
    let photos = dir.join("photos");
    let mut keys = photo_folder(&photos);
    std::fs::copy(testkit::fixture("coffee.jpg"), photos.join(ODD_KEY)).unwrap();
    keys.push(ODD_KEY.to_string());
    std::fs::write(photos.join("notes.txt"), "secret notes").unwrap();
    std::fs::write(dir.join("secret.txt"), "top secret").unwrap();
    let out = ok(lookalike!(dir, &["index", "photos"]));
    assert!(
        out.contains(&format!("indexed {} images", keys.len())),
        "{out}"
    );
    keys
}

fn keys_of(answer: &Value) -> Vec<String> {
    answer["results"]
        .as_array()
        .unwrap_or_else(|| panic!("no results in {answer}"))
        .iter()
        .map(|r| r["key"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn serves_the_api_the_page_and_only_indexed_images() {
    if testkit::encoder().is_none() {
        return;
    }
    let dir = testkit::tempdir();
    let keys = indexed_photos(dir.path());
    let server = Server::start(Path::new(BIN), dir.path(), &["--check-interval", "0"]);
    let addr = server.addr;

    // The page, at / and /index.html, exactly as the query function serves it.
    for target in ["/", "/index.html"] {
        let r = get(addr, target);
        assert_eq!(r.status, 200, "{target}");
        assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
        assert_eq!(r.text(), lookalike::api::PAGE);
    }
    let stats = get(addr, "/stats").json();
    assert_eq!(stats["items"], keys.len() as u64, "{stats}");
    assert_eq!(stats["categories"]["drinks"], 5, "{stats}");
    assert_eq!(get(addr, "/openapi.json").json()["openapi"], "3.0.3");

    // By key: the photo's own variants first, itself left out, each with a URL of this server.
    let answer = get(addr, "/items/animals/chelsea.jpg/similar?k=3").json();
    let found = keys_of(&answer);
    assert_eq!(found.len(), 3, "{answer}");
    assert!(!found.contains(&"animals/chelsea.jpg".to_string()));
    assert!(found.iter().all(|k| k.starts_with("animals/")), "{answer}");
    assert_eq!(answer["query"]["key"], "animals/chelsea.jpg");
    assert_eq!(answer["query"]["url"], "images/animals/chelsea.jpg");
    assert_eq!(answer["query"]["category"], "animals");

    // A filter, pages, near-duplicates: the same routes as the query function's.
    let answer = get(
        addr,
        "/items/animals/chelsea.jpg/similar?k=5&filter=category!%3Danimals",
    )
    .json();
    let found = keys_of(&answer);
    assert_eq!(found.len(), 5, "{answer}");
    assert!(found.iter().all(|k| !k.starts_with("animals/")), "{answer}");
    let page = |offset: usize, k: usize| {
        keys_of(
            &get(
                addr,
                &format!("/items/animals/chelsea.jpg/similar?k={k}&offset={offset}"),
            )
            .json(),
        )
    };
    let (first, second) = (page(0, 2), page(2, 2));
    assert_eq!([first, second].concat(), page(0, 4));
    let answer = get(addr, "/items/drinks/coffee.jpg/duplicates").json();
    let found = keys_of(&answer);
    assert!(found.contains(&ODD_KEY.to_string()), "{answer}");
    assert!(found.iter().all(|k| k.starts_with("drinks/")), "{answer}");
    assert!(answer["results"]
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["score"].as_f64().unwrap() >= 0.92));

    // By image: the same photo first; the odd key's URL is percent-encoded and serves it.
    let coffee = std::fs::read(testkit::fixture("coffee.jpg")).unwrap();
    let r = request(
        addr,
        "POST",
        "/search?k=13",
        &[("content-type", "image/jpeg")],
        &coffee,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let answer = r.json();
    assert_eq!(keys_of(&answer).len(), keys.len(), "{answer}");
    assert!(answer.get("query").is_none(), "{answer}");
    let odd = answer["results"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["key"] == ODD_KEY)
        .expect("the odd key is found");
    assert_eq!(odd["url"], "images/drinks/caf%C3%A9%20au%20lait.jpg");

    // Every result's image: the file's bytes, its type, an ETag that revalidates.
    for result in answer["results"].as_array().unwrap() {
        let key = result["key"].as_str().unwrap();
        let url = format!("/{}", result["url"].as_str().unwrap());
        let r = get(addr, &url);
        assert_eq!(r.status, 200, "{url}: {}", r.text());
        assert_eq!(r.header("content-type"), Some("image/jpeg"), "{url}");
        assert_eq!(
            r.body,
            std::fs::read(dir.path().join("photos").join(key)).unwrap(),
            "{url}"
        );
        assert!(r
            .header("cache-control")
            .is_some_and(|c| c.contains("max-age")));
        let etag = r.header("etag").expect("an etag").to_string();
        let again = request(addr, "GET", &url, &[("if-none-match", &etag)], &[]);
        assert_eq!(again.status, 304, "{url}");
        assert!(again.body.is_empty());
    }
    // HEAD of an image: its headers, no body.
    let r = request(addr, "HEAD", "/images/animals/chelsea.jpg", &[], &[]);
    assert_eq!((r.status, r.body.len()), (200, 0));

    // Nothing but indexed keys: not the folder's other files, nothing outside it.
    for target in [
        "/images/notes.txt",
        "/images/../secret.txt",
        "/images/%2e%2e/secret.txt",
        "/images/..%2Fsecret.txt",
        "/images/animals/../../secret.txt",
        "/images/animals%2F..%2F..%2Fsecret.txt",
        "/images//etc/passwd",
        "/images/%2Fetc%2Fpasswd",
        "/images/%00",
        "/images/animals",
        "/images/animals/",
        "/images/",
        "/images/animals%5C..%5C..%5Csecret.txt",
    ] {
        let r = get(addr, target);
        assert!(
            r.status == 404 || r.status == 400,
            "{target}: {} {}",
            r.status,
            r.text()
        );
        let text = r.text();
        assert!(
            !text.contains("top secret") && !text.contains("secret notes"),
            "{target}: {text}"
        );
        assert!(r.json()["error"].as_str().is_some(), "{target}");
    }
    assert_eq!(
        request(addr, "POST", "/images/animals/chelsea.jpg", &[], &[]).status,
        405
    );

    // Errors in words, as the page shows them; a huge body is refused before it is read.
    let r = request(
        addr,
        "POST",
        "/search",
        &[("content-type", "text/plain")],
        b"hello",
    );
    assert_eq!(r.status, 415, "{}", r.text());
    let huge = (8u64 << 20).to_string();
    let r = request(
        addr,
        "POST",
        "/search",
        &[("content-type", "image/jpeg"), ("content-length", &huge)],
        &[],
    );
    assert_eq!(r.status, 413, "{}", r.text());
    assert_eq!(get(addr, "/items/nope.jpg/similar").status, 404);

    // A photo indexed while it runs is searchable without a restart.
    std::fs::copy(
        testkit::fixture("rocket.jpg"),
        dir.path().join("photos/vehicles/rocket-again.jpg"),
    )
    .unwrap();
    ok(lookalike!(dir.path(), &["index", "photos"]));
    let start = Instant::now();
    while get(addr, "/stats").json()["items"] != keys.len() as u64 + 1 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the new segment was not picked up: {}",
            get(addr, "/stats").json()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let found = keys_of(&get(addr, "/items/vehicles/rocket.jpg/similar?k=1").json());
    assert_eq!(found, ["vehicles/rocket-again.jpg"]);

    // SIGTERM: a clean exit, and a log line for every request.
    let (status, log) = server.stop(Duration::from_secs(15));
    assert!(status.is_some_and(|s| s.success()), "{status:?}\n{log}");
    assert!(log.contains("lookalike serve: stopped"), "{log}");
    assert!(
        log.lines().any(|l| l.contains("request")
            && l.contains("path=/stats")
            && l.contains("status=200")),
        "{log}"
    );
}

#[test]
fn serve_refuses_a_missing_model_or_a_busy_address() {
    let dir = testkit::tempdir();
    let out = testkit::cli::failed(lookalike!(
        dir.path(),
        &["serve", "--addr", "127.0.0.1:0", "--model", "no-model-here"],
    ));
    assert!(out.contains("no model in no-model-here"), "{out}");
    if testkit::encoder().is_none() {
        return;
    }
    indexed_photos(dir.path());
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = testkit::cli::failed(lookalike!(dir.path(), &["serve", "--addr", &addr]));
    assert!(out.contains(&format!("cannot listen on {addr}")), "{out}");
}

/// Where screenshots go: `target/screenshots` (or under `CARGO_TARGET_DIR`).
fn screenshot_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| testkit::repo_root().join("target"));
    let target = if target.is_relative() {
        testkit::repo_root().join(target)
    } else {
        target
    };
    target.join("screenshots")
}

/// A script that is truthy once `n` or more results are shown and every thumbnail has loaded.
fn loaded(n: usize) -> String {
    format!(
        "const imgs = [...document.querySelectorAll('#results img')];
         return imgs.length >= {n} && imgs.every(i => i.complete && i.naturalWidth > 0);"
    )
}

/// The error the page shows, once it shows one.
const SHOWN_ERROR: &str = "const e = document.getElementById('error');
     return e.classList.contains('shown') && e.textContent;";

const RESULT_KEYS: &str =
    "return [...document.querySelectorAll('#results a')].map(a => a.dataset.key);";

#[test]
fn the_page_in_a_real_browser() {
    if testkit::encoder().is_none() {
        return;
    }
    let Some((chromium, driver)) = find_browser() else {
        assert!(
            std::env::var_os("LOOKALIKE_REQUIRE_BROWSER").is_none(),
            "LOOKALIKE_REQUIRE_BROWSER is set but chromium and chromedriver are not installed"
        );
        println!(
            "SKIPPED the_page_in_a_real_browser: chromium and chromedriver are not installed \
             (Debian: apt-get install chromium chromium-driver; scripts/test.sh does this)"
        );
        return;
    };
    let dir = testkit::tempdir();
    let keys = indexed_photos(dir.path());
    let server = Server::start(Path::new(BIN), dir.path(), &[]);
    let base = format!("http://{}/", server.addr);
    let b = Browser::start(&chromium, &driver).expect("a headless browser");
    let wait = Duration::from_secs(60);

    b.goto(&base).unwrap();
    // The index's size and its categories come from /stats.
    let info = b
        .wait_for(
            "const t = document.getElementById('index-info').textContent;
             return t.includes('images') && document.querySelectorAll('#category option').length === 4 && t;",
            wait,
        )
        .unwrap();
    assert!(
        info.as_str()
            .unwrap()
            .starts_with(&format!("{} images", keys.len())),
        "{info}"
    );

    // Upload a photo: k results, every thumbnail loaded, the photo itself first, the timings shown.
    b.eval("document.getElementById('k').value = '6';", vec![])
        .unwrap();
    b.send_keys("#file", testkit::fixture("coffee.jpg").to_str().unwrap())
        .unwrap();
    b.wait_for(&loaded(6), wait).unwrap();
    let shown = b.eval(RESULT_KEYS, vec![]).unwrap();
    assert_eq!(shown.as_array().unwrap().len(), 6, "{shown}");
    // The photo itself and its copy under another name are first (in either order).
    let mut first_two: Vec<&str> = shown.as_array().unwrap()[..2]
        .iter()
        .map(|k| k.as_str().unwrap())
        .collect();
    first_two.sort();
    assert_eq!(first_two, [ODD_KEY, "drinks/coffee.jpg"], "{shown}");
    let status = b
        .eval(
            "return document.getElementById('status').textContent;",
            vec![],
        )
        .unwrap();
    assert!(
        status.as_str().unwrap().contains("6 results in")
            && status.as_str().unwrap().contains("encode"),
        "{status}"
    );
    assert_eq!(
        b.eval(
            "return document.getElementById('query-image').hidden;",
            vec![]
        )
        .unwrap(),
        false,
        "the query image is shown"
    );
    // Thumbnails keep their square box whatever the photo's shape (no layout jump).
    let square = b
        .eval(
            "return [...document.querySelectorAll('#results .thumb')].every(t => {
               const r = t.getBoundingClientRect(); return Math.abs(r.width - r.height) < 1; });",
            vec![],
        )
        .unwrap();
    assert_eq!(square, true);
    let shots = screenshot_dir();
    std::fs::create_dir_all(&shots).unwrap();
    let png = b.screenshot().unwrap();
    assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
    std::fs::write(shots.join("search-page.png"), &png).unwrap();
    println!("screenshot: {}", shots.join("search-page.png").display());

    // Click the second result: the URL carries its key and the results are its neighbours.
    let clicked = shown[1].as_str().unwrap().to_string();
    b.click("#results li:nth-child(2) a").unwrap();
    b.wait_for(
        &format!(
            "return new URLSearchParams(location.search).get('key') === {:?} &&
               document.getElementById('query-caption').textContent.startsWith({:?}) &&
               document.querySelectorAll('#results a').length === 6 &&
               ![...document.querySelectorAll('#results a')].some(a => a.dataset.key === {:?});",
            clicked, clicked, clicked
        ),
        wait,
    )
    .unwrap();
    b.wait_for(&loaded(6), wait).unwrap();
    assert!(b.url().unwrap().contains("k=6"), "{}", b.url().unwrap());

    // Back: the upload's results again.
    b.back().unwrap();
    b.wait_for(
        "return !new URLSearchParams(location.search).has('key') &&
           document.querySelectorAll('#results a').length === 6 &&
           document.getElementById('query-caption').textContent === 'coffee.jpg';",
        wait,
    )
    .unwrap();

    // A category narrows the results, and the URL says so.
    b.click("#category option[value='vehicles']").unwrap();
    b.wait_for(
        "const cats = [...document.querySelectorAll('#results .category')].map(c => c.textContent.trim());
         return new URLSearchParams(location.search).get('category') === 'vehicles' &&
           cats.length === 4 && cats.every(c => c === 'vehicles');",
        wait,
    )
    .unwrap();

    // A file that is not an image: the API's 415 in words.
    let notes = dir.path().join("notes.txt");
    std::fs::write(&notes, "not a photo").unwrap();
    b.send_keys("#file", notes.to_str().unwrap()).unwrap();
    let error = b.wait_for(SHOWN_ERROR, wait).unwrap();
    assert!(error.as_str().unwrap().contains("not an image"), "{error}");
    assert_eq!(
        b.eval(
            "return document.querySelectorAll('#results li').length;",
            vec![]
        )
        .unwrap(),
        0
    );

    // A shared link renders its results on load.
    b.goto(&format!("{base}?key=vehicles%2Frocket.jpg&k=3"))
        .unwrap();
    b.wait_for(
        "return document.getElementById('query-caption').textContent.startsWith('vehicles/rocket.jpg') &&
           document.querySelectorAll('#results a').length === 3;",
        wait,
    )
    .unwrap();
    b.wait_for(&loaded(3), wait).unwrap();
    let shown = b.eval(RESULT_KEYS, vec![]).unwrap();
    assert!(
        shown
            .as_array()
            .unwrap()
            .iter()
            .all(|k| k.as_str().unwrap().starts_with("vehicles/")),
        "{shown}"
    );

    // By keyboard alone: Tab from the top of the page reaches the results, and Enter on one
    // searches for images like it.
    b.eval(
        "document.activeElement.blur(); window.scrollTo(0, 0);",
        vec![],
    )
    .unwrap();
    let mut tabs = 0;
    let focused = loop {
        b.press(&[TAB]).unwrap();
        tabs += 1;
        let on = b
            .eval(
                "const a = document.activeElement; return a && a.matches('#results a') ? a.dataset.key : null;",
                vec![],
            )
            .unwrap();
        if let Some(key) = on.as_str() {
            break key.to_string();
        }
        assert!(tabs < 20, "20 presses of Tab never reached a result");
    };
    b.press(&[ENTER]).unwrap();
    b.wait_for(
        &format!(
            "return new URLSearchParams(location.search).get('key') === {focused:?} &&
               document.getElementById('query-caption').textContent.startsWith({focused:?});"
        ),
        wait,
    )
    .unwrap();

    // A sign-in token (for an API behind a JWT authoriser) goes with every API call.
    b.eval(
        "sessionStorage.setItem('lookalike-token', 't0ken');
         window.sentAuth = [];
         const real = window.fetch;
         window.fetch = (url, init) => { window.sentAuth.push(((init || {}).headers || {}).authorization); return real(url, init); };
         const k = document.getElementById('k'); k.value = '2'; k.dispatchEvent(new Event('change'));",
        vec![],
    )
    .unwrap();
    b.wait_for(
        "return document.querySelectorAll('#results a').length === 2 &&
           window.sentAuth.length > 0 && window.sentAuth.every(a => a === 'Bearer t0ken');",
        wait,
    )
    .unwrap();

    // On a phone-sized window: the page fits its width (nothing to scroll sideways), the
    // results still show, and the query image sits above them.
    b.set_window_size(390, 844).unwrap();
    b.wait_for(
        "return window.innerWidth <= 420 &&
           document.documentElement.scrollWidth <= window.innerWidth &&
           document.querySelectorAll('#results a').length === 2 &&
           document.getElementById('drop').getBoundingClientRect().bottom
             <= document.getElementById('results').getBoundingClientRect().top;",
        wait,
    )
    .unwrap();

    // An unknown key in a link: the 404 in words, not an empty page.
    b.goto(&format!("{base}?key=nope.jpg")).unwrap();
    let error = b.wait_for(SHOWN_ERROR, wait).unwrap();
    assert!(error.as_str().unwrap().contains("nope.jpg"), "{error}");
}
