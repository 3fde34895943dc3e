"""The management web UI in a real browser: headless Chromium (Debian's
``chromium`` and ``chromium-driver`` packages) driven by Selenium against
the release binary.

The test logs in, declares a queue through the UI's form, publishes
messages through the UI, and sees the queue's count in the list and the
overview's queue-depth chart change; and on a queue's page browses and
gets messages; and a user without read permission on the queue sees the
API's refusal when it tries to get them. The Nodes view shows this node
running and alone (no cluster configured); the Streams view shows a stream
queue's message count and a consumer group's partitions with their owner,
committed offset and lag. On failure the browser's screen is
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

from conftest import REPO_ROOT, BrokerProcess, _broker_binary, _find_free_port, connection_params

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


def cell(driver, selector) -> str | None:
    """The text of the first element matching `selector`, or None."""
    from selenium.webdriver.common.by import By

    found = driver.find_elements(By.CSS_SELECTOR, selector)
    return found[0].text if found else None


def summary_value(driver, container, term) -> str | None:
    """The value of `term` in a summary list (<dd data-field=term>) under `container`."""
    return cell(driver, f'{container} dd[data-field="{term}"]')


def test_the_nodes_view_shows_this_node_running_and_alone(ui_broker, browser):
    from selenium.webdriver.common.by import By

    driver = browser
    status, nodes = api(ui_broker, "GET", "/nodes")
    assert status == 200 and len(nodes) == 1
    node = nodes[0]["name"]
    assert node
    try:
        log_in(driver, ui_broker.management_url())
        driver.find_element(By.CSS_SELECTOR, "#tabs a[data-tab=nodes]").click()
        row = f'#node-list tr[data-key="{node}"]'
        wait_for(driver, lambda d: cell(d, f"{row} td.state") == "running", what="this node running")
        assert cell(driver, f"{row} td.name") == node
        assert len(driver.find_elements(By.CSS_SELECTOR, "#node-list tbody tr")) == 1
        assert re.fullmatch(r"\d+(s|m \d+s|h \d+m|d \d+h)", cell(driver, f"{row} td.uptime")), \
            cell(driver, f"{row} td.uptime")
        assert re.fullmatch(r"[\d.]+ (B|KiB|MiB|GiB)", cell(driver, f"{row} td.memory")), \
            cell(driver, f"{row} td.memory")
        used, total = cell(driver, f"{row} td.fds").replace(",", "").split(" / ")
        assert 0 < int(used) <= int(total)
        assert cell(driver, f"{row} td.partitions") == "none"

        # No [cluster] configuration: alone, its own leader, one member.
        summary = "#cluster-summary"
        assert summary_value(driver, summary, "State") == "alone"
        assert summary_value(driver, summary, "This node") == node
        assert summary_value(driver, summary, "Leader") == node
        assert summary_value(driver, summary, "Members") == "1"
        assert summary_value(driver, summary, "Term") is None
        assert driver.find_element(By.ID, "cluster-alone").text.startswith("This node runs alone")
        member = f'#cluster-members tr[data-key="{node}"]'
        assert len(driver.find_elements(By.CSS_SELECTOR, "#cluster-members tbody tr")) == 1
        assert cell(driver, f"{member} td.voter") == "yes"
        assert cell(driver, f"{member} td.reachable") == "yes"
        assert "this node" in cell(driver, f"{member} td.name")
        screenshot(driver, "nodes")
    except BaseException:
        save_failure(driver, ui_broker)
        raise


def test_the_streams_view_shows_a_stream_and_a_consumer_groups_lag(ui_broker, browser):
    import pika

    driver = browser
    suffix = uuid.uuid4().hex[:8]
    stream, super_stream, group = f"ui-stream-{suffix}", f"ui-orders-{suffix}", "ui-group"
    publisher = pika.BlockingConnection(connection_params(ui_broker))
    member = None
    try:
        ch = publisher.channel()
        ch.confirm_delivery()
        ch.queue_declare(stream, durable=True, arguments={"x-queue-type": "stream"})
        for i in range(4):
            ch.basic_publish("", stream, f"event {i}".encode(), mandatory=True)
        # A super stream of two partitions: 5 messages to partition 0, 3 to 1.
        ch.exchange_declare(super_stream, exchange_type="x-super-stream", durable=True,
                            arguments={"x-partitions": 2})
        for partition, count in ((0, 5), (1, 3)):
            for i in range(count):
                ch.basic_publish(super_stream, "", f"p{partition}-{i}".encode(), mandatory=True,
                                 properties=pika.BasicProperties(headers={"x-partition": partition}))

        log_in(driver, ui_broker.management_url())
        driver.get(f"{ui_broker.management_url()}#/streams")
        row = f'#stream-list tr[data-key="/|{stream}"]'
        wait_for(driver, lambda d: cell(d, f"{row} td.retained") == "4", what="4 messages in the stream")
        assert cell(driver, f"{row} td.name") == stream
        assert cell(driver, f"{row} td.unacked") == "0"
        assert cell(driver, f"{row} td.consumers") == "0"
        assert cell(driver, f"{row} td.bytes").endswith("B")
        # The partitions are stream queues too.
        for partition in (0, 1):
            assert cell(driver, f'#stream-list tr[data-key="/|{super_stream}-{partition}"] td.name') \
                == f"{super_stream}-{partition}"
        assert "No consumer groups" in cell(driver, "#group-list")

        # One member joins the group from the first offset, gets all eight
        # messages, and acks the first three of partition 0 only.
        member = pika.BlockingConnection(connection_params(ui_broker))
        mch = member.channel()
        mch.basic_qos(prefetch_count=20)
        received = []
        mch.basic_consume(super_stream, lambda c, method, props, body: received.append((
            props.headers["x-stream-partition"], props.headers["x-stream-offset"], method.delivery_tag)),
            consumer_tag="ui-member",
            arguments={"x-consumer-group": group, "x-stream-offset": "first"})
        deadline = time.monotonic() + WAIT
        while len(received) < 8 and time.monotonic() < deadline:
            member.process_data_events(time_limit=0.2)
        assert sorted((p, o) for p, o, _ in received) == \
            sorted([(0, o) for o in range(5)] + [(1, o) for o in range(3)]), received
        first_three = sorted((o, tag) for p, o, tag in received if p == 0)[:3]
        for _, tag in first_three:
            mch.basic_ack(tag)
        member.process_data_events(time_limit=0.2)
        committed = first_three[-1][0]

        # The view refreshes by itself: the group's card appears.
        card = f'#group-list [data-group="/|{super_stream}|{group}"]'
        p0, p1 = f"{card} .partitions tr[data-key='0']", f"{card} .partitions tr[data-key='1']"
        wait_for(driver, lambda d: cell(d, f"{p0} td.lag") == "2", what="lag 2 on partition 0")
        assert cell(driver, f"{p0} td.queue") == f"{super_stream}-0"
        assert cell(driver, f"{p0} td.owner") == "ui-member"
        assert cell(driver, f"{p0} td.committed") == str(committed)
        # Partition 0's stream retains all five; two are still unacked.
        partition0 = f'#stream-list tr[data-key="/|{super_stream}-0"]'
        wait_for(driver, lambda d: cell(d, f"{partition0} td.unacked") == "2", what="2 unacked on partition 0")
        assert cell(driver, f"{partition0} td.retained") == "5"
        assert cell(driver, f"{p1} td.queue") == f"{super_stream}-1"
        assert cell(driver, f"{p1} td.owner") == "ui-member"
        assert cell(driver, f"{p1} td.committed") == "none"
        assert cell(driver, f"{p1} td.lag") == "3"
        assert summary_value(driver, card, "Members") == "1"
        assert summary_value(driver, card, "Total lag") == "5"
        assert cell(driver, f"{card} .members tr[data-key='ui-member'] td.assigned") == "0, 1"
        screenshot(driver, "streams")
    except BaseException:
        save_failure(driver, ui_broker)
        raise
    finally:
        for connection in (member, publisher):
            if connection is not None and connection.is_open:
                connection.close()


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
