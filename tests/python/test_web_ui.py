"""The management web UI in a real browser: headless Chromium (Debian's
``chromium`` and ``chromium-driver`` packages) driven by Selenium against
the release binary.

The test logs in, declares a queue through the UI's form, publishes
messages through the UI, and sees the queue's count in the list and the
overview's queue-depth chart change; and on a queue's page browses and
gets messages; and a user without read permission on the queue sees the
API's refusal when it tries to get them. On failure the browser's screen is
saved to ``target/ui-failure.png``.

Without Chromium the test is skipped locally but fails when ``CI=true``,
so CI cannot pass without having run it. ``CHROMIUM_BIN`` and
``CHROMEDRIVER_BIN`` override the Debian paths; ``UI_SCREENSHOTS=DIR``
saves a screenshot of each page visited.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from conftest import REPO_ROOT, BrokerProcess, _broker_binary, _find_free_port

CHROMIUM = os.environ.get("CHROMIUM_BIN", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("CHROMEDRIVER_BIN", "/usr/bin/chromedriver")
FAILURE_SCREENSHOT = REPO_ROOT / "target" / "ui-failure.png"
# Generous: the broker samples message counts every 5 s and the overview
# refreshes every 5 s, on a loaded machine.
CHART_TIMEOUT = 90
WAIT = 30

ANSI = re.compile(r"\x1b\[[0-9;]*m")
LISTENING = re.compile(r"management API listening.*?addr=([0-9.]+):(\d+)")


class UiBroker(BrokerProcess):
    """The broker with its management API on an ephemeral loopback port."""

    def env(self) -> dict:
        env = super().env()
        env["BROKER__MANAGEMENT__BIND"] = "127.0.0.1"
        env["BROKER__MANAGEMENT__PORT"] = "0"
        return env

    def management_url(self) -> str:
        """The address the broker logged for its management listener."""
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            text = ANSI.sub("", self.log_path.read_text(errors="replace"))
            found = LISTENING.findall(text)
            if found:
                host, port = found[-1]
                return f"http://{host}:{port}/"
            time.sleep(0.1)
        raise RuntimeError(f"no management listener in the log:\n{self.log_tail()}")


@pytest.fixture
def ui_broker():
    """A fresh broker per test, so that counts and charts start at zero."""
    workdir = Path(tempfile.mkdtemp(prefix="broker-ui-"))
    bp = UiBroker(_broker_binary(), _find_free_port(), workdir)
    bp.start()
    try:
        yield bp
    finally:
        bp.stop()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def browser():
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if missing:
        message = (f"headless Chromium is needed for the web UI test; missing {missing} "
                   "(apt-get install chromium chromium-driver)")
        if os.environ.get("CI") == "true":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                "--disable-gpu", "--window-size=1400,1100"):
        options.add_argument(arg)
    # The driver is given explicitly, so Selenium Manager downloads nothing.
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(WAIT)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(driver, condition, timeout=WAIT, what="condition"):
    from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.2,
                         ignored_exceptions=(StaleElementReferenceException, WebDriverException)
                         ).until(lambda d: condition(d), message=f"timed out waiting for {what}")


def screenshot(driver, name):
    folder = os.environ.get("UI_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(Path(folder) / f"{name}.png"))


def chart_data(driver, chart_id, attribute):
    raw = driver.find_element("id", chart_id).get_attribute(f"data-{attribute}")
    return json.loads(raw) if raw else None


def test_declare_publish_and_watch_the_count_and_chart(ui_broker, browser):
    from selenium.webdriver.common.by import By

    driver = browser
    queue = f"ui-{uuid.uuid4().hex[:8]}"
    try:
        driver.get(ui_broker.management_url())

        # A wrong password shows the API's reason and stays on the login form.
        wait_for(driver, lambda d: d.find_element(By.ID, "login-username").is_displayed(), what="login form")
        driver.find_element(By.ID, "login-username").send_keys("guest")
        driver.find_element(By.ID, "login-password").send_keys("wrong")
        driver.find_element(By.ID, "login-submit").click()
        wait_for(driver, lambda d: "Login failed" in d.find_element(By.ID, "login-error").text,
                 what="the login error")
        password = driver.find_element(By.ID, "login-password")
        password.clear()
        password.send_keys("guest")
        driver.find_element(By.ID, "login-submit").click()

        # Overview: the depth chart starts at zero messages.
        wait_for(driver, lambda d: chart_data(d, "chart-depths", "last") is not None, what="the depth chart")
        assert chart_data(driver, "chart-depths", "last")["Total"] == 0
        assert driver.find_element(By.CSS_SELECTOR, "#whoami").text.startswith("guest")
        screenshot(driver, "overview-empty")

        # Queues: declare through the form; the queue shows up in the list.
        driver.find_element(By.CSS_SELECTOR, "#tabs a[data-tab=queues]").click()
        wait_for(driver, lambda d: d.find_element(By.ID, "queue-declare").is_displayed(), what="declare form")
        driver.find_element(By.CSS_SELECTOR, "#queue-declare input[name=name]").send_keys(queue)
        driver.find_element(By.CSS_SELECTOR, "#queue-declare button[type=submit]").click()
        row = f'#queue-list tr[data-key="/|{queue}"]'
        wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, row), what="the new queue's row")
        assert driver.find_element(By.CSS_SELECTOR, f"{row} td.ready").text == "0"

        # The queue's page: publish three messages through the form.
        driver.find_element(By.CSS_SELECTOR, f"{row} td.name a").click()
        wait_for(driver, lambda d: d.find_element(By.ID, "queue-publish").is_displayed(), what="publish form")
        for i in range(1, 4):
            payload = driver.find_element(By.CSS_SELECTOR, "#queue-publish textarea[name=payload]")
            payload.clear()
            payload.send_keys(f"hello {i}")
            driver.find_element(By.CSS_SELECTOR, "#queue-publish button[type=submit]").click()
            wait_for(driver, lambda d, i=i: ready_in_summary(d) == str(i), what=f"{i} ready in the summary")
        assert driver.find_element(By.ID, "flash").text == "Message published."
        screenshot(driver, "queue-page")

        # Back in the list, the row counts them.
        driver.find_element(By.CSS_SELECTOR, "#tabs a[data-tab=queues]").click()
        wait_for(driver, lambda d: d.find_element(By.CSS_SELECTOR, f"{row} td.ready").text == "3",
                 what="3 ready in the queue list")
        assert driver.find_element(By.CSS_SELECTOR, f"{row} td.total").text == "3"
        screenshot(driver, "queues")

        # Overview: the depth chart's newest sample reaches 3, and the
        # publish rate chart shows the publishes.
        driver.find_element(By.CSS_SELECTOR, "#tabs a[data-tab=overview]").click()
        wait_for(driver, lambda d: (chart_data(d, "chart-depths", "last") or {}).get("Total") == 3,
                 timeout=CHART_TIMEOUT, what="3 messages in the depth chart")
        wait_for(driver, lambda d: (chart_data(d, "chart-rates", "peak") or {}).get("Publish", 0) > 0,
                 timeout=CHART_TIMEOUT, what="a publish rate in the rates chart")
        assert driver.find_element(By.CSS_SELECTOR, "#total-messages .value").text == "3"
        screenshot(driver, "overview")
    except BaseException:
        save_failure(driver, ui_broker)
        raise


def api(broker: UiBroker, method: str, path: str, body=None):
    """(status, JSON) of a management API call as guest."""
    request = urllib.request.Request(broker.management_url() + "api" + path, method=method,
                                     data=None if body is None else json.dumps(body).encode())
    request.add_header("Authorization", "Basic " + base64.b64encode(b"guest:guest").decode())
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=WAIT) as response:
            text = response.read()
            return response.status, json.loads(text) if text else None
    except urllib.error.HTTPError as e:
        return e.code, None


def log_in(driver, url, user="guest", password="guest"):
    from selenium.webdriver.common.by import By

    driver.get(url)
    wait_for(driver, lambda d: d.find_element(By.ID, "login-username").is_displayed(), what="login form")
    driver.find_element(By.ID, "login-username").send_keys(user)
    driver.find_element(By.ID, "login-password").send_keys(password)
    driver.find_element(By.ID, "login-submit").click()
    wait_for(driver, lambda d: d.find_element(By.ID, "whoami").text.startswith(user), what="logged in")


def test_browse_and_get_from_the_queue_page(ui_broker, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    driver = browser
    queue = f"ui-{uuid.uuid4().hex[:8]}"
    assert api(ui_broker, "PUT", f"/queues/%2F/{queue}", {"durable": False})[0] == 201
    for i in range(2):
        status, body = api(ui_broker, "POST", "/exchanges/%2F/amq.default/publish",
                           {"properties": {}, "routing_key": queue, "payload": f"m{i}",
                            "payload_encoding": "string"})
        assert (status, body) == (200, {"routed": True})
    try:
        log_in(driver, ui_broker.management_url())
        driver.get(f"{ui_broker.management_url()}#/queues/%2F/{queue}")
        wait_for(driver, lambda d: ready_in_summary(d) == "2", what="2 ready in the summary")

        # Browse shows both messages and leaves them in the queue. Until
        # the broker has the endpoint, the UI shows the API's 404 instead.
        browse_status, _ = api(ui_broker, "POST", f"/queues/%2F/{queue}/browse", {"count": 1})
        driver.find_element(By.CSS_SELECTOR, "#queue-browse button[type=submit]").click()
        if browse_status == 404:
            wait_for(driver, lambda d: d.find_element(By.ID, "flash").text.startswith("404"),
                     what="the API's 404 in the flash line")
        else:
            browsed = "#queue-messages .message[data-how=browse] pre.payload"
            wait_for(driver, lambda d: [e.text for e in d.find_elements(By.CSS_SELECTOR, browsed)] == ["m0", "m1"],
                     what="both messages browsed")
            assert api(ui_broker, "GET", f"/queues/%2F/{queue}")[1]["messages_ready"] == 2

        # Get with automatic ack takes the first message off the queue.
        Select(driver.find_element(By.CSS_SELECTOR, "#queue-get select[name=ackmode]")).select_by_value("ack_requeue_false")
        driver.find_element(By.CSS_SELECTOR, "#queue-get button[type=submit]").click()
        got = "#queue-messages .message[data-how=get] pre.payload"
        wait_for(driver, lambda d: [e.text for e in d.find_elements(By.CSS_SELECTOR, got)] == ["m0"],
                 what="the first message got")
        wait_for(driver, lambda d: ready_in_summary(d) == "1", what="1 ready after the get")
        screenshot(driver, "queue-get")
    except BaseException:
        save_failure(driver, ui_broker)
        raise


def test_a_refused_get_shows_the_reason(ui_broker, browser):
    from selenium.webdriver.common.by import By

    driver = browser
    queue = f"ui-{uuid.uuid4().hex[:8]}"
    assert api(ui_broker, "PUT", f"/queues/%2F/{queue}", {"durable": False})[0] == 201
    status, body = api(ui_broker, "POST", "/exchanges/%2F/amq.default/publish",
                       {"properties": {}, "routing_key": queue, "payload": "secret",
                        "payload_encoding": "string"})
    assert (status, body) == (200, {"routed": True})
    # A management user who may read only other queues.
    assert api(ui_broker, "PUT", "/users/viewer", {"password": "pw", "tags": "management"})[0] in (201, 204)
    assert api(ui_broker, "PUT", "/permissions/%2F/viewer",
               {"configure": ".*", "write": ".*", "read": "^public$"})[0] in (201, 204)
    try:
        log_in(driver, ui_broker.management_url(), "viewer", "pw")
        driver.get(f"{ui_broker.management_url()}#/queues/%2F/{queue}")
        wait_for(driver, lambda d: ready_in_summary(d) == "1", what="1 ready in the summary")

        # Get is refused: the flash line shows the API's 403 and its reason.
        driver.find_element(By.CSS_SELECTOR, "#queue-get button[type=submit]").click()
        refusal = f"403: access to queue '{queue}' in vhost '/' refused for user 'viewer'"
        wait_for(driver, lambda d: d.find_element(By.ID, "flash").text == refusal,
                 what="the refusal in the flash line")
        screenshot(driver, "queue-get-refused")
        assert not driver.find_elements(By.CSS_SELECTOR, "#queue-messages .message")
        assert api(ui_broker, "GET", f"/queues/%2F/{queue}")[1]["messages_ready"] == 1
        # Still logged in: a refusal is not a failed login.
        assert driver.find_element(By.ID, "whoami").text.startswith("viewer")
    except BaseException:
        save_failure(driver, ui_broker)
        raise


def save_failure(driver, broker):
    FAILURE_SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    try:
        driver.save_screenshot(str(FAILURE_SCREENSHOT))
        print(f"screenshot saved to {FAILURE_SCREENSHOT}")
    except Exception as e:  # the browser itself may be gone
        print(f"no screenshot: {e}")
    print(f"--- broker log ---\n{broker.log_tail()}")


def ready_in_summary(driver) -> str | None:
    """The Ready value of the queue page's summary."""
    from selenium.webdriver.common.by import By

    terms = driver.find_elements(By.CSS_SELECTOR, "#queue-summary dt")
    values = driver.find_elements(By.CSS_SELECTOR, "#queue-summary dd")
    for term, value in zip(terms, values):
        if term.text == "Ready":
            return value.text
    return None
