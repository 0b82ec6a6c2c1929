#!/usr/bin/env python3
"""Herald's browser client (Clients/js/herald.js) in a real Chromium, driven by selenium,
against real nodes: two Herald processes on one redis-server, all started here and ended here.

  browser_test.py HERALD_BINARY REDIS_PORT HTTP_A WS_A HTTP_B PAGE_PORT

The page (Tests/Browser/page.html) receives pushes; node A is killed (-9) while the page is on
it; three messages are pushed through node B meanwhile; node A comes back on its port and the
page receives them, in order, after the first two. A second page with a bad token shows
ERROR 401. Prints one JSON object: what the pages reported. Every wait is bounded."""
import base64, hashlib, hmac, http.server as web, json, os, signal, subprocess, sys, threading, time, urllib.error, urllib.request

from selenium import webdriver
from selenium.webdriver.chrome.service import Service

SECRET = "browser-test-device-secret-0123456789abcdef"
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def jwt(sub):
    def b64(data):
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()
    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64(json.dumps({"sub": sub, "exp": int(time.time()) + 3600}).encode())
    signature = hmac.new(SECRET.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(signature)}"


def until(what, condition, timeout=30):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"not within {timeout} s: {what}")
        time.sleep(0.05)  # polling interval, not synchronisation: the condition decides


def http(method, port, path, body=None):
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method,
                                     data=json.dumps(body).encode() if body is not None else None)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, None
    except OSError:
        return 0, None


class Quiet(web.SimpleHTTPRequestHandler):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, directory=ROOT, **kwargs)

    def log_message(self, *args):
        pass


def main():
    binary, redis_port, http_a, ws_a, http_b, page_port = sys.argv[1], *map(int, sys.argv[2:7])
    processes = {}

    def node(name, http_port, ws_port):
        environment = dict(os.environ, HERALD_NODE_ID=name, HERALD_REDIS_URL=f"redis://127.0.0.1:{redis_port}",
                           HERALD_TCP_ADDR="127.0.0.1:0", HERALD_HTTP_ADDR=f"127.0.0.1:{http_port}",
                           HERALD_RELAY_ADDR="127.0.0.1:0", HERALD_DEVICE_JWT_SECRET=SECRET, HERALD_DRAIN_TIMEOUT_S="1")
        environment["HERALD_WS_ADDR"] = f"127.0.0.1:{ws_port}" if ws_port else ""
        processes[name] = subprocess.Popen([binary, "serve"], env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        until(f"node {name} ready", lambda: http("GET", http_port, "/readyz")[0] == 200)

    server = web.ThreadingHTTPServer(("127.0.0.1", page_port), Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    driver = None
    try:
        processes["redis"] = subprocess.Popen(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        node("a", http_a, ws_a)
        node("b", http_b, 0)

        options = webdriver.ChromeOptions()
        for argument in ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]:
            options.add_argument(argument)
        options.binary_location = "/usr/bin/chromium"
        driver = webdriver.Chrome(options=options, service=Service("/usr/bin/chromedriver"))
        report = lambda: driver.execute_script("return window.heraldReport || null")

        driver.get(f"http://127.0.0.1:{page_port}/Tests/Browser/page.html?servers=ws://127.0.0.1:{ws_a}/ws&id=alice&token={jwt('alice')}")
        until("the page connected", lambda: report() and report()["states"][-1] == "connected")
        for text in ["one", "two"]:
            assert http("POST", http_a, "/v1/push", {"client_id": "alice", "data": text})[0] == 202
        until("two messages shown", lambda: len(report()["messages"]) >= 2)

        processes["a"].send_signal(signal.SIGKILL)
        processes["a"].wait(10)
        until("the page saw the node go", lambda: report()["states"][-1] != "connected")
        for text in ["three", "four", "five"]:
            assert http("POST", http_b, "/v1/push", {"client_id": "alice", "data": text})[0] == 202
        node("a", http_a, ws_a)
        until("five messages shown", lambda: len(report()["messages"]) >= 5)
        until("every message acknowledged", lambda: http("GET", http_b, "/v1/clients/alice")[1]["pending"] == 0)
        first = report()
        shown = [item.text for item in driver.find_elements("css selector", "#messages li")]

        driver.get(f"http://127.0.0.1:{page_port}/Tests/Browser/page.html?servers=ws://127.0.0.1:{ws_a}/ws&id=mallory&token=not-a-token")
        until("the bad token refused", lambda: report() and report()["errors"])
        until("the page closed for good", lambda: report()["states"][-1] == "closed")
        second = report()
        state_text = driver.find_element("id", "state").text
        print(json.dumps({
            "messages": [message["text"] for message in first["messages"]],
            "shown": shown,
            "states": first["states"],
            "error_code": second["errors"][0]["code"],
            "error_state": state_text,
            "connects_after_401": second["states"].count("connecting"),
        }))
    finally:
        if driver:
            driver.quit()
        server.shutdown()
        for process in processes.values():
            if process.poll() is None:
                process.kill()
                process.wait(10)


if __name__ == "__main__":
    main()
