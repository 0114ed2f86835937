#!/usr/bin/env python3
"""Recurly's official Python client (`recurly`, pinned in requirements.txt) against the sandbox.

A client nobody on this project wrote (issue 12, point 8): it walks every Recurly route the
bridge uses (reference `recurly-teams-sendgrid.md` §2-§6: plans, add-ons, measured units,
accounts, subscriptions with change/cancel/reactivate/terminate, usage) in the client's own strict
mode (`RECURLY_STRICT_MODE=TRUE`: an answer attribute its resource classes do not define raises),
and adds what strict mode does not check: every value's JSON type against the client's schema
(strict mode casts a number into a `str` field without complaint), the list envelope, the fields
the reference names for an answer, and that what was sent comes back parsed to the same values.

Usage:
    run.py --sandbox-bin target/debug/billing-bridge   # starts `… sandbox --listen 127.0.0.1:0`
    run.py --url http://127.0.0.1:8081                 # a sandbox already running

Exit status 0 when every check passes; 1 with every failure listed otherwise.
"""

import argparse
import datetime as dt
import http.client
import json
import os
import re
import subprocess
import sys
import threading
import urllib.parse
import uuid

# Strict mode is read when the module is imported.
os.environ["RECURLY_STRICT_MODE"] = "TRUE"

import recurly  # noqa: E402  (after the environment it reads)
from recurly import resources  # noqa: E402
from recurly.resource import Resource, Page, DT_FORMAT  # noqa: E402

UTC = dt.timezone.utc


# ----------------------------------------------------------------------------------------------
# Plumbing: the official client, its connection pointed at `<sandbox>/recurly`


class Captured:
    """A read HTTP answer the client's `Response` can read again; keeps the raw body for checks."""

    def __init__(self, response):
        self.status = response.status
        self.headers = response.headers
        self.body = response.read()

    def read(self):
        return self.body


class SandboxConnection:
    """Stands in for the client's `HTTPSConnection` to v3.recurly.com: plain HTTP to the sandbox,
    every path under the sandbox's `/recurly` prefix (the client's own paths are kept as is)."""

    def __init__(self, base_url, timeout=30):
        parts = urllib.parse.urlsplit(base_url)
        self.prefix = parts.path.rstrip("/")
        self.conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
        self.last = None
        self.log = []

    def request(self, method, path, body=None, headers=None):
        self.pending = (method, path)
        self.conn.request(method, self.prefix + path, body, headers=headers or {})

    def getresponse(self):
        self.last = Captured(self.conn.getresponse())
        self.log.append((self.pending[0], self.pending[1], self.last.status))
        return self.last


class SandboxClient(recurly.Client):
    def __init__(self, base_url, api_key):
        super().__init__(api_key)
        self.connection = SandboxConnection(base_url)
        # The client keeps its connection in a private attribute and offers no base URL option.
        self._BaseClient__conn = self.connection


class Absent:
    """What a resource attribute reads as when the answer left the field out (the client sets
    only the fields an answer carries), so that a missing field is a failed check, not a crash."""

    def __bool__(self):
        return False

    def __iter__(self):
        return iter(())

    def __repr__(self):
        return "<absent>"

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return self


ABSENT = Absent()


def _absent_attribute(self, name):
    if name.startswith("_"):
        raise AttributeError(name)
    return ABSENT


Resource.__getattr__ = _absent_attribute


# ----------------------------------------------------------------------------------------------
# Checks


FAILURES = []
CHECKS = [0]


def fail(what, message):
    FAILURES.append("%s: %s" % (what, message))
    print("FAIL %s: %s" % (what, message), flush=True)


def expect(what, condition, message):
    CHECKS[0] += 1
    if not condition:
        fail(what, message)
    return condition


def expect_eq(what, got, want):
    return expect(what, got == want, "got %r, expected %r" % (got, want))


def schema_of(class_name):
    klass = getattr(resources, class_name, None)
    return getattr(klass, "schema", None)


RECURLY_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")


def conforms(what, value, class_name, where="$"):
    """Every key of `value` is in the client's schema of `class_name`, with the JSON type the
    schema casts from; nested resources and lists of them likewise."""
    schema = schema_of(class_name)
    if schema is None:
        fail(what, "%s: the client has no class %s" % (where, class_name))
        return
    if not isinstance(value, dict):
        fail(what, "%s: a %s must be an object, got %r" % (where, class_name, value))
        return
    for key, v in value.items():
        at = "%s.%s" % (where, key)
        kind = schema.get(key)
        CHECKS[0] += 1
        if kind is None:
            if class_name != "ErrorMayHaveTransaction" or key != "object":
                fail(what, "%s: field not in the client's %s schema (value %r)" % (at, class_name, v))
            continue
        if v is None:
            continue
        if kind is str:
            ok = isinstance(v, str)
        elif kind is bool:
            ok = isinstance(v, bool)
        elif kind is int:
            ok = isinstance(v, int) and not isinstance(v, bool)
        elif kind is float:
            ok = isinstance(v, (int, float)) and not isinstance(v, bool)
        elif kind is dict:
            ok = isinstance(v, dict)
        elif kind is dt:  # the client's schema names the module for date-times
            ok = isinstance(v, str) and RECURLY_TIME.match(v) is not None
            if ok:
                try:
                    dt.datetime.strptime(v, DT_FORMAT)
                except ValueError as e:
                    fail(what, "%s: %r does not parse as the client parses times: %s" % (at, v, e))
        elif isinstance(kind, str):
            ok = isinstance(v, dict)
            if ok:
                conforms(what, v, kind, at)
        elif isinstance(kind, list):
            ok = isinstance(v, list)
            if ok:
                for i, item in enumerate(v):
                    conforms(what, item, kind[0], "%s[%d]" % (at, i))
        else:
            ok = True
        if not ok:
            fail(what, "%s: %r is not what the client's %s schema reads (%r)" % (at, v, class_name, kind))


def class_of(obj):
    return "".join(part.title() for part in obj.split("_"))


def check_answer(what, client, expected_object):
    """The last answer's raw JSON: an object of `expected_object` (or a list of them)."""
    raw = json.loads(client.connection.last.body.decode("utf-8"))
    if expected_object.startswith("list:"):
        item_object = expected_object[5:]
        expect_eq(what + " list keys", sorted(raw), ["data", "has_more", "next", "object"])
        expect_eq(what + " list object", raw.get("object"), "list")
        expect(what + " has_more", isinstance(raw.get("has_more"), bool), "has_more %r" % raw.get("has_more"))
        nxt = raw.get("next")
        expect(what + " next", nxt is None or isinstance(nxt, str), "next %r" % nxt)
        if raw.get("has_more"):
            expect(what + " next", isinstance(nxt, str) and nxt.startswith("/"), "a path when has_more: %r" % nxt)
        for i, item in enumerate(raw.get("data") or []):
            expect_eq("%s data[%d].object" % (what, i), item.get("object"), item_object)
            conforms(what, item, class_of(item_object), "$.data[%d]" % i)
    else:
        expect_eq(what + " object", raw.get("object"), expected_object)
        conforms(what, raw, class_of(expected_object))
    return raw


def call(what, client, expected_object, fn, *args, **kwargs):
    """Runs one client call in strict mode. A strict-mode refusal is a failure; the answer is then
    read leniently so the walk can go on. Any other exception is a failure and yields None."""
    client.connection.last = None
    try:
        result = fn(*args, **kwargs)
    except ValueError as e:
        last = client.connection.last
        fail(what, "strict mode refused the answer: %s" % e)
        if last is None or last.status >= 400 or not last.body:
            return None
        recurly.STRICT_MODE = False
        try:
            result = Resource.cast_json(json.loads(last.body.decode("utf-8")))
        finally:
            recurly.STRICT_MODE = True
    except Exception as e:  # noqa: BLE001  (every exception is a finding)
        last = client.connection.last
        body = last.body.decode("utf-8", "replace")[:600] if last is not None and last.body else ""
        fail(what, "%s: %s %s" % (type(e).__name__, e, body))
        return None
    CHECKS[0] += 1
    if expected_object is not None and client.connection.last is not None and client.connection.last.body:
        check_answer(what, client, expected_object)
    return result


def expect_error(what, client, error_class, error_type, status, fn, *args, **kwargs):
    """The call raises the client's `error_class` with `error_type`, from a `status` answer."""
    client.connection.last = None
    try:
        fn(*args, **kwargs)
    except error_class as e:
        expect_eq(what + " error type", getattr(e.error, "type", None), error_type)
        expect_eq(what + " status", client.connection.last.status, status)
        raw = json.loads(client.connection.last.body.decode("utf-8"))
        expect_eq(what + " error body keys", sorted(raw), ["error"])
        conforms(what, raw["error"], "ErrorMayHaveTransaction", "$.error")
        return e
    except Exception as e:  # noqa: BLE001
        last = client.connection.last
        body = last.body.decode("utf-8", "replace")[:600] if last is not None and last.body else ""
        fail(what, "expected %s, got %s: %s %s" % (error_class.__name__, type(e).__name__, e, body))
        return None
    fail(what, "expected %s, the call succeeded" % error_class.__name__)
    return None


def has_fields(what, raw, fields):
    """The reference names these fields for the answer: they are present (null allowed)."""
    if raw is None:
        return
    missing = [f for f in fields if f not in raw]
    expect(what + " documented fields", not missing, "missing %s" % missing)


def raw_last(client):
    last = client.connection.last
    return json.loads(last.body.decode("utf-8")) if last is not None and last.body else None


# ----------------------------------------------------------------------------------------------
# The walk over the routes


def walk(client):
    run = uuid.uuid4().hex[:8]
    now = dt.datetime.now(UTC).replace(microsecond=0)

    # -- Measured units (§3): create, get by id and by name, list, update.
    unit_name = "transactions-%s" % run
    unit = call("create_measured_unit", client, "measured_unit", client.create_measured_unit,
                {"name": unit_name, "display_name": "Transactions", "description": "API calls"})
    if unit is not None:
        expect_eq("create_measured_unit name", unit.name, unit_name)
        expect_eq("create_measured_unit display_name", unit.display_name, "Transactions")
        expect_eq("create_measured_unit description", unit.description, "API calls")
        expect_eq("create_measured_unit state", unit.state, "active")
        got = call("get_measured_unit by name", client, "measured_unit",
                   client.get_measured_unit, "name-" + unit_name)
        expect_eq("get_measured_unit by name id", getattr(got, "id", None), unit.id)
        got = call("get_measured_unit by id", client, "measured_unit", client.get_measured_unit, unit.id)
        expect_eq("get_measured_unit by id name", getattr(got, "name", None), unit_name)
        updated = call("update_measured_unit", client, "measured_unit", client.update_measured_unit,
                       unit.id, {"display_name": "API calls"})
        expect_eq("update_measured_unit display_name", getattr(updated, "display_name", None), "API calls")
    names = []
    pager = client.list_measured_unit(params={"limit": 200})
    for page in iterate("list_measured_unit", client, "list:measured_unit", pager.pages()):
        names.extend(u.name for u in page)
    expect("list_measured_unit", unit_name in names, "%s not listed in %s" % (unit_name, names))

    # -- Plans with inline usage add-ons (§2, §3), as the bridge writes them: codes carrying
    # 32-hex Amplify ids, no accounting code on the add-ons (issue 12: not refused for being long).
    plan_id_hex = uuid.uuid4().hex
    plan_code = "amplify-plan-%s" % plan_id_hex
    tiered_code = "amplify-quota-%s" % uuid.uuid4().hex
    flat_code = "amplify-quota-%s" % uuid.uuid4().hex
    tiers = [
        {"ending_quantity": 1000, "currencies": [{"currency": "USD", "unit_amount": 0}]},
        {"ending_quantity": 999999999, "currencies": [{"currency": "USD", "unit_amount_decimal": "0.002"}]},
    ]
    plan_body = {
        "code": plan_code, "name": "Silver", "description": plan_id_hex,
        "accounting_code": "amplify-plan",
        "interval_unit": "months", "interval_length": 1,
        "currencies": [{"currency": "USD", "unit_amount": 49, "setup_fee": 0}],
        "add_ons": [
            {"code": tiered_code, "name": "lining", "add_on_type": "usage", "usage_type": "price",
             "usage_calculation_type": "cumulative", "tier_type": "tiered",
             "measured_unit_name": unit_name, "tiers": tiers},
            {"code": flat_code, "name": "bulk", "add_on_type": "usage", "usage_type": "price",
             "tier_type": "flat", "measured_unit_name": unit_name,
             "currencies": [{"currency": "USD", "unit_amount_decimal": "0.001"}]},
        ],
    }
    plan = call("create_plan", client, "plan", client.create_plan, plan_body)
    if plan is None:
        # Already a failure; with short accounting codes the rest of the walk can still run.
        for add_on, accounting in zip(plan_body["add_ons"], ["amplify-lining", "amplify-bulk"]):
            add_on["accounting_code"] = accounting
        plan = call("create_plan (accounting codes set)", client, "plan", client.create_plan, plan_body)
    plan_raw = raw_last(client)
    if plan is None:
        fail("walk", "no plan: the subscription and usage routes cannot be walked")
        return
    expect_eq("create_plan code", plan.code, plan_code)
    expect_eq("create_plan name", plan.name, "Silver")
    expect_eq("create_plan description", plan.description, plan_id_hex)
    expect_eq("create_plan accounting_code", plan.accounting_code, "amplify-plan")
    expect_eq("create_plan interval", (plan.interval_unit, plan.interval_length), ("months", 1))
    expect_eq("create_plan state", plan.state, "active")
    expect_eq("create_plan auto_renew", plan.auto_renew, True)
    expect_eq("create_plan pricing_model", plan.pricing_model, "fixed")
    expect_eq("create_plan trial_length", plan.trial_length, 0)
    prices = [(p.currency, p.unit_amount, p.setup_fee) for p in (plan.currencies or [])]
    expect_eq("create_plan currencies", prices, [("USD", 49.0, 0.0)])
    expect("create_plan created_at", isinstance(plan.created_at, dt.datetime), repr(plan.created_at))
    expect_eq("create_plan deleted_at", plan.deleted_at, None)
    has_fields("create_plan", plan_raw, ["id", "object", "code", "state", "name", "description",
                                         "interval_unit", "interval_length", "currencies",
                                         "created_at", "updated_at", "deleted_at"])

    by_code = call("get_plan by code", client, "plan", client.get_plan, "code-" + plan_code)
    expect_eq("get_plan by code id", getattr(by_code, "id", None), plan.id)
    by_id = call("get_plan by id", client, "plan", client.get_plan, plan.id)
    expect_eq("get_plan by id code", getattr(by_id, "code", None), plan_code)
    updated = call("update_plan", client, "plan", client.update_plan, plan.id,
                   {"name": "Silver (2026)", "currencies": [{"currency": "USD", "unit_amount": 59}]})
    if updated is not None:
        expect_eq("update_plan name", updated.name, "Silver (2026)")
        expect_eq("update_plan unit_amount", [p.unit_amount for p in updated.currencies or []], [59.0])
        expect_eq("update_plan interval kept", (updated.interval_unit, updated.interval_length), ("months", 1))

    # A second plan so that a one-item page has a next page to follow.
    plan2_code = "amplify-plan-%s" % uuid.uuid4().hex
    plan2_body = {"code": plan2_code, "name": "Gold", "interval_unit": "days", "interval_length": 30,
                  "currencies": [{"currency": "USD", "unit_amount": 0}]}
    plan2 = call("create_plan (second)", client, "plan", client.create_plan, plan2_body)
    if plan2 is None:
        plan2_body["accounting_code"] = "amplify-gold"
        plan2 = call("create_plan (second, accounting code set)", client, "plan", client.create_plan, plan2_body)
    if plan2 is not None:
        expect_eq("create_plan (second) interval", (plan2.interval_unit, plan2.interval_length), ("days", 30))
        expect_eq("create_plan (second) unit_amount", [p.unit_amount for p in plan2.currencies or []], [0.0])
    listed = []
    for page in iterate("list_plans limit 1", client, "list:plan",
                        client.list_plans(params={"limit": 1, "order": "asc", "sort": "created_at"}).pages()):
        expect("list_plans limit 1 page size", len(page) <= 1, "a page of %d" % len(page))
        listed.extend(p.code for p in page)
    expect("list_plans paging", plan_code in listed and plan2_code in listed,
           "both plans listed over one-item pages: %s" % listed)
    expect_eq("list_plans paging distinct", len(listed), len(set(listed)))
    count = call("list_plans count (HEAD)", client, None, lambda: client.list_plans().count())
    expect("list_plans count (HEAD)", isinstance(count, int) and count >= 2,
           "Recurly-Total-Records %r" % count)
    active = []
    for page in iterate("list_plans state=active", client, "list:plan",
                        client.list_plans(params={"state": "active", "limit": 200}).pages()):
        active.extend(p.code for p in page)
    expect("list_plans state=active", plan_code in active, "%s in %s" % (plan_code, active))

    # -- Add-ons (§3).
    add_ons = {}
    for page in iterate("list_plan_add_ons", client, "list:add_on",
                        client.list_plan_add_ons(plan.id, params={"limit": 200}).pages()):
        for a in page:
            add_ons[a.code] = a
    expect_eq("list_plan_add_ons codes", sorted(add_ons), sorted([tiered_code, flat_code]))
    tiered = call("get_plan_add_on tiered", client, "add_on", client.get_plan_add_on, plan.id,
                  "code-" + tiered_code)
    tiered_raw = raw_last(client)
    if tiered is not None:
        expect_eq("tiered add_on code", tiered.code, tiered_code)
        expect_eq("tiered add_on name", tiered.name, "lining")
        expect_eq("tiered add_on plan_id", tiered.plan_id, plan.id)
        expect_eq("tiered add_on types", (tiered.add_on_type, tiered.usage_type, tiered.tier_type,
                                          tiered.usage_calculation_type),
                  ("usage", "price", "tiered", "cumulative"))
        expect_eq("tiered add_on measured_unit_id", tiered.measured_unit_id, getattr(unit, "id", None))
        expect_eq("tiered add_on state", tiered.state, "active")
        expect_eq("tiered add_on usage_timeframe", tiered.usage_timeframe, "billing_period")
        want_amounts = [(1000, "USD", 0.0, None), (999999999, "USD", None, "0.002")]
        got_amounts = [(t.ending_quantity, c.currency, c.unit_amount, c.unit_amount_decimal)
                       for t in tiered.tiers or [] for c in t.currencies or []]
        # Recurly answers whichever of the two price fields was set; the other may be null.
        expect("tiered add_on tiers", len(got_amounts) == 2 and all(
            g[0] == w[0] and g[1] == w[1]
            and (g[2] == w[2] if w[2] is not None else g[3] == w[3] or (g[2] is not None and abs(g[2] - float(w[3])) < 1e-12))
            for g, w in zip(got_amounts, want_amounts)), "tiers %r, sent %r" % (got_amounts, tiers))
        # A tiered add-on's prices are in its tiers; whether Recurly answers `[]` or null for
        # `currencies` is undocumented, so either passes (absence is checked below).
        expect("tiered add_on currencies", tiered.currencies in ([], None), repr(tiered.currencies))
        has_fields("get_plan_add_on tiered", tiered_raw, [
            "id", "object", "plan_id", "code", "state", "name", "add_on_type", "usage_type",
            "usage_calculation_type", "measured_unit_id", "accounting_code", "optional",
            "tier_type", "usage_timeframe", "tiers", "currencies", "created_at", "updated_at",
            "deleted_at"])
    flat = call("get_plan_add_on flat", client, "add_on", client.get_plan_add_on, plan.id,
                "code-" + flat_code)
    if flat is not None:
        expect_eq("flat add_on tier_type", flat.tier_type, "flat")
        expect_eq("flat add_on currencies", [(c.currency, c.unit_amount_decimal) for c in flat.currencies or []],
                  [("USD", "0.001")])
        expect("flat add_on tiers", flat.tiers in ([], None), repr(flat.tiers))
    site_wide = call("get_add_on by id", client, "add_on", client.get_add_on, getattr(tiered, "id", "missing"))
    expect_eq("get_add_on by id code", getattr(site_wide, "code", None), tiered_code)
    codes = []
    for page in iterate("list_add_ons", client, "list:add_on",
                        client.list_add_ons(params={"limit": 200}).pages()):
        codes.extend(a.code for a in page)
    expect("list_add_ons", tiered_code in codes and flat_code in codes, "both add-ons in %s" % codes)

    volume_code = "amplify-quota-%s" % uuid.uuid4().hex
    volume = call("create_plan_add_on", client, "add_on", client.create_plan_add_on, plan.id,
                  {"code": volume_code, "name": "alerts", "add_on_type": "usage", "usage_type": "price",
                   "tier_type": "volume", "measured_unit_id": getattr(unit, "id", None),
                   "accounting_code": "amplify-alerts",
                   "tiers": [{"ending_quantity": 500, "currencies": [{"currency": "USD", "unit_amount": 2}]},
                             {"currencies": [{"currency": "USD", "unit_amount": 1}]}]})
    if volume is not None:
        expect_eq("create_plan_add_on tier_type", volume.tier_type, "volume")
        expect_eq("create_plan_add_on accounting_code", volume.accounting_code, "amplify-alerts")
        expect_eq("create_plan_add_on last tier ending_quantity",
                  [t.ending_quantity for t in volume.tiers or []], [500, 999999999])
        renamed = call("update_plan_add_on", client, "add_on", client.update_plan_add_on, plan.id,
                       "code-" + volume_code, {"name": "alerts (v2)"})
        expect_eq("update_plan_add_on name", getattr(renamed, "name", None), "alerts (v2)")
        expect_eq("update_plan_add_on tier_type kept", getattr(renamed, "tier_type", None), "volume")
    expect_error("create_plan_add_on duplicate code", client, recurly.errors.ValidationError,
                 "validation", 422, client.create_plan_add_on, plan.id,
                 {"code": volume_code, "name": "again", "add_on_type": "usage", "usage_type": "price",
                  "tier_type": "flat", "measured_unit_id": getattr(unit, "id", None),
                  "currencies": [{"currency": "USD", "unit_amount": 1}]})

    # -- Accounts (§4).
    account_code = "amplify-team-%s" % uuid.uuid4().hex
    expect_error("get_account missing", client, recurly.errors.NotFoundError, "not_found", 404,
                 client.get_account, "code-" + account_code)
    account = call("create_account", client, "account", client.create_account,
                   {"code": account_code, "email": "billing@consumer.example",
                    "first_name": "Dana", "last_name": "Dev", "company": "Consumers"})
    if account is None:
        fail("walk", "no account: the subscription and usage routes cannot be walked")
        return
    expect_eq("create_account fields", (account.code, account.email, account.first_name, account.last_name,
                                        account.company, account.state),
              (account_code, "billing@consumer.example", "Dana", "Dev", "Consumers", "active"))
    got = call("get_account by code", client, "account", client.get_account, "code-" + account_code)
    expect_eq("get_account by code id", getattr(got, "id", None), account.id)
    got = call("update_account", client, "account", client.update_account, account.id,
               {"email": "accounts@consumer.example"})
    expect_eq("update_account email", getattr(got, "email", None), "accounts@consumer.example")
    expect_error("create_account duplicate", client, recurly.errors.ValidationError, "validation", 422,
                 client.create_account, {"code": account_code})
    emails = []
    for page in iterate("list_accounts email", client, "list:account",
                        client.list_accounts(params={"email": "accounts@consumer.example", "limit": 200}).pages()):
        emails.extend(a.code for a in page)
    expect("list_accounts email", account_code in emails, "%s in %s" % (account_code, emails))

    # -- Subscriptions (§5).
    sub_body = {"plan_code": plan_code, "currency": "USD", "account": {"code": account_code},
                "add_ons": [{"code": tiered_code}, {"code": flat_code}],
                "collection_method": "manual", "net_terms": 30}
    sub = call("create_subscription", client, "subscription", client.create_subscription, sub_body)
    sub_raw = raw_last(client)
    if sub is None:
        fail("walk", "no subscription: the usage routes cannot be walked")
        return
    expect_eq("create_subscription state", sub.state, "active")
    expect_eq("create_subscription plan", (getattr(sub.plan, "code", None), getattr(sub.plan, "id", None)),
              (plan_code, plan.id))
    expect_eq("create_subscription account", (getattr(sub.account, "code", None), getattr(sub.account, "id", None)),
              (account_code, account.id))
    expect_eq("create_subscription currency", sub.currency, "USD")
    expect_eq("create_subscription collection", (sub.collection_method, sub.net_terms), ("manual", 30))
    expect_eq("create_subscription quantity", sub.quantity, 1)
    expect_eq("create_subscription unit_amount", sub.unit_amount, 59.0)
    expect_eq("create_subscription add_ons", sorted((a.add_on.code, a.quantity, a.tier_type)
                                                     for a in sub.add_ons or []),
              sorted([(tiered_code, 1, "tiered"), (flat_code, 1, "flat")]))
    for a in sub.add_ons or []:
        expect_eq("create_subscription add_on subscription_id", a.subscription_id, sub.id)
    started, ends = sub.current_period_started_at, sub.current_period_ends_at
    expect("create_subscription period", isinstance(started, dt.datetime) and isinstance(ends, dt.datetime)
           and started <= dt.datetime.now(UTC) < ends, "period %r .. %r" % (started, ends))
    expect_eq("create_subscription canceled_at", sub.canceled_at, None)
    expect_eq("create_subscription expires_at", sub.expires_at, None)
    has_fields("create_subscription", sub_raw, [
        "id", "uuid", "state", "current_period_started_at", "current_period_ends_at",
        "current_term_started_at", "current_term_ends_at", "add_ons", "active_invoice_id",
        "expires_at", "canceled_at"])
    got = call("get_subscription by id", client, "subscription", client.get_subscription, sub.id)
    expect_eq("get_subscription by id uuid", getattr(got, "uuid", None), sub.uuid)
    got = call("get_subscription by uuid", client, "subscription", client.get_subscription, "uuid-" + sub.uuid)
    expect_eq("get_subscription by uuid id", getattr(got, "id", None), sub.id)
    expect_error("create_subscription second to the plan", client, recurly.errors.ValidationError,
                 "validation", 422, client.create_subscription, sub_body)
    live = []
    for page in iterate("list_account_subscriptions live", client, "list:subscription",
                        client.list_account_subscriptions("code-" + account_code,
                                                          params={"state": "live", "limit": 200}).pages()):
        live.extend(s.id for s in page)
    expect_eq("list_account_subscriptions live", live, [sub.id])
    ids = []
    for page in iterate("list_subscriptions", client, "list:subscription",
                        client.list_subscriptions(params={"limit": 200}).pages()):
        ids.extend(s.id for s in page)
    expect("list_subscriptions", sub.id in ids, "%s in %s" % (sub.id, ids))
    # As the bridge lists them to learn many billing periods at once (pipeline/src/periods.rs).
    live_ids = []
    for page in iterate("list_subscriptions live", client, "list:subscription",
                        client.list_subscriptions(params={"state": "live", "limit": 200}).pages()):
        live_ids.extend(s.id for s in page)
    expect("list_subscriptions live", sub.id in live_ids, "%s in %s" % (sub.id, live_ids))

    # A pending change, read back and dropped; then adding the volume add-on now.
    change = call("create_subscription_change renewal", client, "subscription_change",
                  client.create_subscription_change, sub.id,
                  {"timeframe": "renewal", "add_ons": [{"code": tiered_code}, {"code": flat_code}, {"code": volume_code}]})
    if change is not None:
        expect_eq("subscription change subscription_id", change.subscription_id, sub.id)
        expect_eq("subscription change activated", change.activated, False)
        got = call("get_subscription_change", client, "subscription_change", client.get_subscription_change, sub.id)
        expect_eq("get_subscription_change id", getattr(got, "id", None), change.id)
        got = call("get_subscription pending_change", client, "subscription", client.get_subscription, sub.id)
        expect_eq("get_subscription pending_change id", getattr(getattr(got, "pending_change", None), "id", None), change.id)
        call("remove_subscription_change", client, None, client.remove_subscription_change, sub.id)
        expect_eq("remove_subscription_change status", client.connection.last.status, 204)
        expect_error("get_subscription_change after removal", client, recurly.errors.NotFoundError,
                     "not_found", 404, client.get_subscription_change, sub.id)
    change = call("create_subscription_change now", client, "subscription_change",
                  client.create_subscription_change, sub.id,
                  {"timeframe": "now", "add_ons": [{"code": tiered_code}, {"code": flat_code}, {"code": volume_code}]})
    got = call("get_subscription after change", client, "subscription", client.get_subscription, sub.id)
    expect_eq("subscription add-ons after change", sorted(a.add_on.code for a in getattr(got, "add_ons", None) or []),
              sorted([tiered_code, flat_code, volume_code]))

    # -- Usage (§6): create (with an Idempotency-Key, replayed), list, get, update, remove.
    at = now - dt.timedelta(seconds=90)
    recorded = now - dt.timedelta(seconds=30)
    key = "usage-%s" % run
    usage_body = {"amount": 1523, "merchant_tag": "amplify:%s window:%d" % (run, 1),
                  "usage_timestamp": at, "recording_timestamp": recorded}
    usage = call("create_usage", client, "usage", client.create_usage, sub.id, "code-" + tiered_code,
                 usage_body, headers={"Idempotency-Key": key})
    usage_raw = raw_last(client)
    if usage is not None:
        expect_eq("create_usage amount", usage.amount, 1523.0)
        expect_eq("create_usage merchant_tag", usage.merchant_tag, usage_body["merchant_tag"])
        expect_eq("create_usage usage_timestamp", usage.usage_timestamp, at)
        expect_eq("create_usage recording_timestamp", usage.recording_timestamp, recorded)
        expect_eq("create_usage billed_at", usage.billed_at, None)
        expect_eq("create_usage types", (usage.usage_type, usage.tier_type), ("price", "tiered"))
        expect_eq("create_usage measured_unit_id", usage.measured_unit_id, getattr(unit, "id", None))
        expect_eq("create_usage tiers", [t.ending_quantity for t in usage.tiers or []], [1000, 999999999])
        has_fields("create_usage", usage_raw, [
            "id", "object", "merchant_tag", "amount", "usage_type", "tier_type", "tiers",
            "measured_unit_id", "recording_timestamp", "usage_timestamp", "usage_percentage",
            "unit_amount", "unit_amount_decimal", "billed_at", "created_at", "updated_at"])
        replay = call("create_usage replayed", client, "usage", client.create_usage, sub.id,
                      "code-" + tiered_code, usage_body, headers={"Idempotency-Key": key})
        expect_eq("create_usage replayed id", getattr(replay, "id", None), usage.id)
        expect_eq("create_usage replayed Idempotency-Prior",
                  client.connection.last.headers.get("Idempotency-Prior"), "true")
    flat_usage = call("create_usage flat", client, "usage", client.create_usage, sub.id, "code-" + flat_code,
                      {"amount": 7, "merchant_tag": "flat-%s" % run, "usage_timestamp": at})
    if flat_usage is not None:
        expect_eq("create_usage flat tier_type", flat_usage.tier_type, "flat")
        expect_eq("create_usage flat tiers", flat_usage.tiers, [])
        expect_eq("create_usage flat unit_amount_decimal", flat_usage.unit_amount_decimal, "0.001")
    listed = []
    for page in iterate("list_usage", client, "list:usage",
                        client.list_usage(sub.id, "code-" + tiered_code,
                                          params={"billing_status": "all", "sort": "usage_timestamp",
                                                  "order": "asc", "limit": 200,
                                                  "begin_time": now - dt.timedelta(hours=1)}).pages()):
        listed.extend((u.id, u.amount) for u in page)
    expect_eq("list_usage", listed, [(getattr(usage, "id", None), 1523.0)])
    if usage is not None:
        got = call("get_usage", client, "usage", client.get_usage, usage.id)
        expect_eq("get_usage amount", getattr(got, "amount", None), 1523.0)
        got = call("update_usage", client, "usage", client.update_usage, usage.id,
                   {"amount": 1600, "merchant_tag": "corrected-%s" % run})
        expect_eq("update_usage", (getattr(got, "amount", None), getattr(got, "merchant_tag", None)),
                  (1600.0, "corrected-%s" % run))
    if flat_usage is not None:
        call("remove_usage", client, None, client.remove_usage, flat_usage.id)
        expect_eq("remove_usage status", client.connection.last.status, 204)
        expect_error("get_usage removed", client, recurly.errors.NotFoundError, "not_found", 404,
                     client.get_usage, flat_usage.id)

    # -- Cancel, reactivate, terminate (§5).
    canceled = call("cancel_subscription", client, "subscription", client.cancel_subscription, sub.id,
                    body={"timeframe": "term_end"})
    if canceled is not None:
        expect_eq("cancel_subscription state", canceled.state, "canceled")
        expect("cancel_subscription canceled_at", isinstance(canceled.canceled_at, dt.datetime), repr(canceled.canceled_at))
        expect_eq("cancel_subscription expires_at", canceled.expires_at, canceled.current_period_ends_at)
    again = call("reactivate_subscription", client, "subscription", client.reactivate_subscription, sub.id)
    if again is not None:
        expect_eq("reactivate_subscription state", again.state, "active")
        expect_eq("reactivate_subscription expires_at", again.expires_at, None)
    ended = call("terminate_subscription", client, "subscription", client.terminate_subscription, sub.id,
                 params={"refund": "none", "charge": False})
    if ended is not None:
        expect_eq("terminate_subscription state", ended.state, "expired")
        expect("terminate_subscription expires_at", isinstance(ended.expires_at, dt.datetime), repr(ended.expires_at))
    expect_error("cancel_subscription expired", client, recurly.errors.ValidationError, "validation", 422,
                 client.cancel_subscription, sub.id)

    # -- Closing an account cancels its subscriptions, active to the period's end (Recurly's
    # OpenAPI, deactivate_account); reactivating the account.
    sub2 = call("create_subscription (to close)", client, "subscription", client.create_subscription,
                {"plan_code": plan2_code, "currency": "USD", "account": {"code": account_code}})
    closed = call("deactivate_account", client, "account", client.deactivate_account, account.id)
    expect_eq("deactivate_account state", getattr(closed, "state", None), "inactive")
    if sub2 is not None:
        got = call("get_subscription of a closed account", client, "subscription", client.get_subscription, sub2.id)
        expect_eq("subscription of a closed account state", getattr(got, "state", None), "canceled")
        expect_eq("subscription of a closed account expires_at", getattr(got, "expires_at", None),
                  getattr(got, "current_period_ends_at", "unset"))
    reopened = call("reactivate_account", client, "account", client.reactivate_account, account.id)
    expect_eq("reactivate_account state", getattr(reopened, "state", None), "active")

    # -- Removing an add-on, a plan and the unit (§2, §3).
    if volume is not None:
        gone = call("remove_plan_add_on", client, "add_on", client.remove_plan_add_on, plan.id, "code-" + volume_code)
        expect_eq("remove_plan_add_on state", getattr(gone, "state", None), "inactive")
    removed = call("remove_plan", client, "plan", client.remove_plan, plan.id)
    if removed is not None:
        expect_eq("remove_plan state", removed.state, "inactive")
        expect("remove_plan deleted_at", isinstance(removed.deleted_at, dt.datetime), repr(removed.deleted_at))
    expect_error("get_plan missing", client, recurly.errors.NotFoundError, "not_found", 404,
                 client.get_plan, "code-no-such-plan-%s" % run)
    expect_error("create_plan invalid", client, recurly.errors.ValidationError, "validation", 422,
                 client.create_plan, {"code": "no-currencies-%s" % run, "name": "x", "currencies": []})
    if unit is not None:
        gone = call("remove_measured_unit", client, "measured_unit", client.remove_measured_unit, unit.id)
        expect_eq("remove_measured_unit state", getattr(gone, "state", None), "inactive")


def iterate(what, client, expected_object, pages):
    """Pages of a pager, each answer checked; an exception ends the listing as a failure."""
    while True:
        client.connection.last = None
        try:
            page = next(pages)
        except StopIteration:
            return
        except ValueError as e:
            fail(what, "strict mode refused a page: %s" % e)
            return
        except Exception as e:  # noqa: BLE001
            last = client.connection.last
            body = last.body.decode("utf-8", "replace")[:600] if last is not None and last.body else ""
            fail(what, "%s: %s %s" % (type(e).__name__, e, body))
            return
        check_answer(what, client, expected_object)
        yield page


# ----------------------------------------------------------------------------------------------


def start_sandbox(binary):
    """Starts `binary sandbox --listen 127.0.0.1:0` and reads the address it prints; the port is
    the one the sandbox bound, never one picked here."""
    proc = subprocess.Popen([binary, "sandbox", "--listen", "127.0.0.1:0"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    found = {}

    def read():
        for line in proc.stdout:
            m = re.search(r"sandbox: (http://\S+)", line)
            if m and "url" not in found:
                found["url"] = m.group(1)
                ready.set()
        ready.set()

    ready = threading.Event()
    threading.Thread(target=read, daemon=True).start()
    ready.wait(60)
    if "url" not in found:
        proc.kill()
        sys.exit("the sandbox printed no address (exit status %r)" % proc.poll())
    return proc, found["url"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--sandbox-bin", help="billing-bridge binary to start the sandbox with")
    group.add_argument("--url", help="a running sandbox's base URL")
    args = parser.parse_args()
    assert recurly.STRICT_MODE, "the client's strict mode is on"
    proc = None
    if args.sandbox_bin:
        proc, url = start_sandbox(args.sandbox_bin)
    else:
        url = args.url
    try:
        client = SandboxClient(url.rstrip("/") + "/recurly", "recurly-official-client-key")
        print("recurly %s (strict mode) against %s/recurly" % (recurly.__version__, url), flush=True)
        walk(client)
        routes = sorted({(m, re.sub(r"/[0-9a-z]{12,}|code-[^/?]+|name-[^/?]+|uuid-[^/?]+", "/{id}", p.split("?")[0]))
                         for m, p, _ in client.connection.log})
        print("%d requests, %d routes, %d checks" % (len(client.connection.log), len(routes), CHECKS[0]))
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(10)
    if FAILURES:
        print("\n%d failure(s):" % len(FAILURES))
        for f in FAILURES:
            print("  - " + f)
        sys.exit(1)
    print("ok: every answer parsed in strict mode and matched what was sent")


if __name__ == "__main__":
    main()
