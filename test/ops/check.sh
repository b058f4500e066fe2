#!/usr/bin/env bash
# Operations checks: the shipped configs, the Prometheus rules and their unit
# tests, the Grafana dashboard, the systemd unit, the compose file, and a
# live postern whose /metrics must pass `promtool check metrics` and which
# must drain and exit 0 on SIGTERM.
#
#   ./test/ops/check.sh
#
# Needs: go, promtool (Debian package prometheus), curl, openssl, python3
# with PyYAML (python3-yaml); systemd-analyze is used when present. Writes only to a
# temporary folder, which it removes; exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/../.."

fail() { echo "FAIL: $*" >&2; exit 1; }
step() { echo "== $*"; }

for tool in go promtool curl openssl; do
  command -v "$tool" >/dev/null 2>&1 || fail "$tool not found (promtool: apt-get install prometheus)"
done
# A Python 3 with PyYAML: the one on PATH, else Debian's (python3-yaml).
PY=""
for py in python3 /usr/bin/python3; do
  if "$py" -c 'import yaml' >/dev/null 2>&1; then PY=$py; break; fi
done
[ -n "$PY" ] || fail "no python3 with PyYAML (apt-get install python3-yaml)"

tmp=$(mktemp -d "${TMPDIR:-/tmp}/postern-ops.XXXXXX")
pid=""
cleanup() {
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT

step "build postern"
go build -o "$tmp/postern" ./cmd/postern
postern="$tmp/postern"

# --- configurations --------------------------------------------------------

step "postern check: configs/dev.yaml, configs/docker.yaml"
"$postern" check -config configs/dev.yaml
"$postern" check -config configs/docker.yaml

# dummy_files DIR: the files the production examples name, valid but fake.
dummy_files() {
  local d=$1
  mkdir -p "$d/certs/pgp" "$d/certs/smime"
  cp configs/policy.yaml "$d/policy.yaml"
  openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=gw.example.org \
    -addext subjectAltName=DNS:gw.example.org \
    -keyout "$d/certs/gw-key.pem" -out "$d/certs/gw.pem" 2>/dev/null
  openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=postern test CA" \
    -keyout "$d/certs/ca-key.pem" -out "$d/certs/clients-ca.pem" 2>/dev/null
  cp "$d/certs/clients-ca.pem" "$d/certs/smime-roots.pem"
  openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$d/certs/dkim-example.org.pem" 2>/dev/null
  head -c 32 /dev/urandom | base64 >"$d/certs/portal-master.key"
}

for name in m365 workspace; do
  step "postern check: configs/$name.yaml (as shipped, and with every #~ option enabled)"
  d="$tmp/etc-$name"
  dummy_files "$d"
  cp "configs/$name.yaml" "$d/postern.yaml"
  "$postern" check -config "$d/postern.yaml"
  sed 's/^\([[:space:]]*\)#~ /\1/' "configs/$name.yaml" >"$d/postern-all.yaml"
  if grep -qE '^[[:space:]]*#~' "$d/postern-all.yaml"; then fail "configs/$name.yaml: a #~ marker without a space after it"; fi
  "$postern" check -config "$d/postern-all.yaml"
done

step "postern check: deploy/compose/postern.yaml (beside the image's policy.yaml)"
mkdir -p "$tmp/etc-compose"
cp configs/policy.yaml "$tmp/etc-compose/policy.yaml"
cp deploy/compose/postern.yaml "$tmp/etc-compose/compose.yaml"
"$postern" check -config "$tmp/etc-compose/compose.yaml"

step "docs/policy.md: every example policy passes postern check"
mkdir -p "$tmp/doc-policies"
"$PY" - docs/policy.md "$tmp/doc-policies" <<'EOF'
import re, sys
text = open(sys.argv[1]).read()
blocks = [b for b in re.findall(r"```yaml\n(.*?)```", text, re.S) if b.startswith("methods:")]
if len(blocks) < 5:
    sys.exit(f"only {len(blocks)} example policies found")
for i, b in enumerate(blocks):
    open(f"{sys.argv[2]}/policy-{i}.yaml", "w").write(b)
print(f"{len(blocks)} example policies")
EOF
for f in "$tmp"/doc-policies/policy-*.yaml; do
  printf 'hostname: postern.localhost\npolicy: %s\nqueue: {dir: %s/q}\naudit: {path: %s/a.jsonl}\n' \
    "$(basename "$f")" "$tmp" "$tmp" >"${f%.yaml}.conf"
  "$postern" check -config "${f%.yaml}.conf" >/dev/null || fail "docs/policy.md: example $(basename "$f") does not pass postern check"
done

step "allowed_networks of the production examples are public ranges, no loopback or private"
"$PY" - configs/m365.yaml configs/workspace.yaml <<'EOF'
import ipaddress, sys, yaml
for path in sys.argv[1:]:
    nets = yaml.safe_load(open(path))["smtp"]["allowed_networks"]
    if not nets:
        sys.exit(f"{path}: allowed_networks is empty")
    for n in nets:
        net = ipaddress.ip_network(n, strict=True)
        if not net.is_global:
            sys.exit(f"{path}: {n} is not a public range")
        if net.prefixlen < (8 if net.version == 4 else 32):
            sys.exit(f"{path}: {n} is implausibly wide")
    print(f"{path}: {len(nets)} ranges ok")
EOF

# --- Prometheus rules, dashboard --------------------------------------------

step "promtool check rules / test rules / check config"
promtool check rules deploy/prometheus/alerts.yaml
promtool test rules deploy/prometheus/alerts_test.yaml
promtool check config deploy/prometheus/prometheus.yml

step "Grafana dashboard: JSON, and every query parses as PromQL"
"$PY" -m json.tool deploy/grafana/postern.json >/dev/null
# Each panel query becomes a recording rule, with Grafana's variables
# replaced, so that promtool parses it.
"$PY" - deploy/grafana/postern.json "$tmp/dashboard-rules.yaml" <<'EOF'
import json, sys
dash = json.load(open(sys.argv[1]))
rules = []
def walk(panels):
    for p in panels:
        walk(p.get("panels", []))
        for t in p.get("targets", []):
            e = t["expr"]
            for var, val in (("$__rate_interval", "5m"), ("$__range", "1h"), ("$__interval", "1m"), ("$instance", ".*")):
                e = e.replace(var, val)
            if "$" in e.replace('"$1"', ""):
                sys.exit(f"panel {p['title']!r}: unknown variable in {t['expr']!r}")
            rules.append({"record": f"dashboard:panel{p['id']}:{t['refId']}", "expr": e})
walk(dash["panels"])
if len(rules) < 10:
    sys.exit(f"only {len(rules)} queries found")
json.dump({"groups": [{"name": "dashboard", "rules": rules}]}, open(sys.argv[2], "w"))
print(f"{len(rules)} queries")
EOF
promtool check rules "$tmp/dashboard-rules.yaml"

# --- systemd, compose ----------------------------------------------------------

if command -v systemd-analyze >/dev/null 2>&1; then
  step "systemd-analyze verify deploy/systemd/postern.service"
  mkdir -p "$tmp/unit"
  sed "s|/usr/local/bin/postern|$postern|g" deploy/systemd/postern.service >"$tmp/unit/postern.service"
  out=$(systemd-analyze verify "$tmp/unit/postern.service" 2>&1) || fail "systemd-analyze: $out"
  [ -z "$out" ] || fail "systemd-analyze warns: $out"
else
  echo "(systemd-analyze not installed: unit not verified)"
fi

step "docker-compose.yaml: parses, bind-mounted files exist"
"$PY" - deploy/docker-compose.yaml <<'EOF'
import os, sys, yaml
path = sys.argv[1]
base = os.path.dirname(path)
doc = yaml.safe_load(open(path))
assert set(doc["services"]) >= {"postern", "postgres", "prometheus"}, doc["services"].keys()
for name, svc in doc["services"].items():
    for v in svc.get("volumes", []):
        src = v.split(":")[0]
        if src.startswith("."):
            if not os.path.exists(os.path.join(base, src)):
                sys.exit(f"{path}: service {name}: {src} does not exist")
    for p in svc.get("ports", []):
        if not str(p).startswith("127.0.0.1:"):
            sys.exit(f"{path}: service {name}: port {p} is not published on 127.0.0.1 only")
ctx = os.path.join(base, doc["services"]["postern"]["build"]["context"], doc["services"]["postern"]["build"]["dockerfile"])
if not os.path.exists(ctx):
    sys.exit(f"{path}: {ctx} does not exist")
print("ok")
EOF

# --- a live instance ------------------------------------------------------------

step "serve: a copy of configs/dev.yaml on free loopback ports"
ports=$("$PY" -c '
import socket
ss = [socket.socket() for _ in range(3)]
for s in ss: s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in ss))
for s in ss: s.close()')
read -r smtp_port admin_port portal_port <<<"$ports"
mkdir -p "$tmp/live"
cp configs/policy.yaml "$tmp/live/policy.yaml"
cp -r configs/demo "$tmp/live/demo"
"$PY" - configs/dev.yaml "$tmp/live/postern.yaml" "$smtp_port" "$admin_port" "$portal_port" <<'EOF'
import sys, yaml
src, dst, smtp, admin, portal = sys.argv[1:]
c = yaml.safe_load(open(src))
c["smtp"]["listen"] = f"127.0.0.1:{smtp}"
c["admin"] = {"listen": f"127.0.0.1:{admin}"}
c["queue"]["dir"] = "var/queue"
c["delivery"]["dir"] = "var/outbox"
c["audit"] = {"path": "var/audit.jsonl"}
c["policy"] = "policy.yaml"
c["storage"] = {"driver": "sqlite", "dsn": "var/postern.db"}
if "portal" in c:
    c["portal"]["listen"] = f"127.0.0.1:{portal}"
    c["portal"]["base_url"] = f"http://127.0.0.1:{portal}"
yaml.safe_dump(c, open(dst, "w"), sort_keys=False)
EOF
"$postern" check -config "$tmp/live/postern.yaml"
"$postern" serve -config "$tmp/live/postern.yaml" 2>"$tmp/serve.log" &
pid=$!
admin="http://127.0.0.1:$admin_port"
up=""
for _ in $(seq 1 100); do
  if curl -fsS -o /dev/null "$admin/healthz" 2>/dev/null; then up=1; break; fi
  kill -0 "$pid" 2>/dev/null || { cat "$tmp/serve.log" >&2; fail "postern serve exited at start-up"; }
  sleep 0.2
done
[ -n "$up" ] || { cat "$tmp/serve.log" >&2; fail "/healthz did not answer within 20s"; }

step "/healthz and /readyz answer 200; postern healthcheck agrees"
for path in healthz readyz; do
  code=$(curl -s -o "$tmp/$path.out" -w '%{http_code}' "$admin/$path")
  [ "$code" = 200 ] || fail "/$path answered $code: $(cat "$tmp/$path.out")"
done
"$postern" healthcheck -url "$admin/healthz" || fail "postern healthcheck failed against a live /healthz"

step "a message over SMTP is accepted, decided and delivered (to the outbox)"
"$PY" - "$smtp_port" <<'EOF'
import smtplib, sys
msg = "From: alice@example.org\r\nTo: carol@example.net\r\nSubject: ops check\r\n\r\nhello\r\n"
with smtplib.SMTP("127.0.0.1", int(sys.argv[1]), timeout=20) as s:
    s.ehlo("ops-check.localhost")
    s.sendmail("alice@example.org", ["carol@example.net"], msg)
EOF
metric() { curl -fsS "$admin/metrics" | awk -v n="$1" '$1 == n {print $2}'; }
delivered=""
for _ in $(seq 1 100); do
  if [ "$(metric 'postern_deliveries_total{method="tls",result="delivered"}')" = 1 ]; then delivered=1; break; fi
  sleep 0.2
done
[ -n "$delivered" ] || { cat "$tmp/serve.log" >&2; fail "the message was not delivered within 20s"; }
[ "$(metric 'postern_messages_received_total{result="accepted"}')" = 1 ] || fail 'postern_messages_received_total{result="accepted"} is not 1'
[ "$(metric 'postern_decisions_total{method="tls"}')" = 1 ] || fail 'postern_decisions_total{method="tls"} is not 1'
ls "$tmp"/live/var/outbox/*.eml >/dev/null 2>&1 || fail "no .eml file in the outbox"

step "promtool check metrics on a live /metrics"
curl -fsS "$admin/metrics" >"$tmp/metrics.txt"
# promtool exits non-zero on a parse error or a lint problem; every lint
# problem fails this check (there are none today).
if ! promtool check metrics <"$tmp/metrics.txt" >"$tmp/lint.txt" 2>&1; then
  cat "$tmp/lint.txt" >&2
  fail "promtool check metrics"
fi
[ ! -s "$tmp/lint.txt" ] || { cat "$tmp/lint.txt" >&2; fail "promtool check metrics printed problems"; }

step "every postern_* name in the alerts and the dashboard is exported"
"$PY" - "$tmp/metrics.txt" deploy/prometheus/alerts.yaml deploy/grafana/postern.json <<'EOF'
import re, sys
exported = set()
for line in open(sys.argv[1]):
    m = re.match(r"# TYPE (\S+) (\S+)", line)
    if m:
        name, kind = m.groups()
        exported.add(name)
        if kind == "histogram":
            exported.update(name + s for s in ("_bucket", "_sum", "_count"))
# SPEC §7 families must all be there.
spec = ["postern_messages_received_total", "postern_decisions_total", "postern_deliveries_total",
        "postern_fallbacks_total", "postern_queue_messages", "postern_queue_oldest_seconds",
        "postern_encrypt_seconds", "postern_delivery_seconds", "postern_key_lookups_total",
        "postern_policy_reloads_total", "postern_portal_events_total"]
missing = [n for n in spec if n not in exported]
if missing:
    sys.exit(f"/metrics lacks SPEC §7 families: {missing}")
# Series that exist only when there is something to report (keys with an
# expiry date, a portal certificate): their absence is not an error.
optional = {"postern_key_expiry_timestamp_seconds"}
if "postern_tls_cert_expiry_timestamp_seconds" not in exported:
    sys.exit("/metrics lacks postern_tls_cert_expiry_timestamp_seconds")
bad = []
for path in sys.argv[2:]:
    for name in set(re.findall(r"\bpostern_[a-z_]+", open(path).read())):
        if name not in exported and name not in optional:
            bad.append(f"{path}: {name}")
if bad:
    sys.exit("not exported: " + ", ".join(sorted(bad)))
print(f"{len(exported)} names exported; alerts and dashboard use only those")
EOF

step "SIGTERM: drain and exit 0"
kill -TERM "$pid"
rc=0
for _ in $(seq 1 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
if kill -0 "$pid" 2>/dev/null; then
  cat "$tmp/serve.log" >&2
  fail "postern still running 60s after SIGTERM"
fi
wait "$pid" || rc=$?
pid=""
[ "$rc" = 0 ] || { cat "$tmp/serve.log" >&2; fail "postern exited $rc after SIGTERM"; }
if "$postern" healthcheck -url "$admin/healthz" 2>/dev/null; then fail "healthcheck passed with postern stopped"; fi
"$postern" audit verify -config "$tmp/live/postern.yaml" | tee "$tmp/verify.out"
grep -q 'ok, 2 records' "$tmp/verify.out" || fail "expected a decision and a delivery record"

step "docs/operations.md: verify a copy of the audit log with a two-line config"
cp "$tmp/live/var/audit.jsonl" "$tmp/audit-copy.jsonl"
printf 'hostname: verify.invalid\naudit: {path: %s}\n' "$tmp/audit-copy.jsonl" >"$tmp/verify.yaml"
"$postern" audit verify -config "$tmp/verify.yaml"
sed -i '1s/"rcpt":"carol@example.net"/"rcpt":"eve@example.com"/' "$tmp/audit-copy.jsonl"
grep -q '"rcpt":"eve@example.com"' "$tmp/audit-copy.jsonl" || fail "could not edit the audit copy"
if "$postern" audit verify -config "$tmp/verify.yaml" >/dev/null 2>&1; then fail "audit verify accepted an edited copy"; fi

echo "ops checks passed"
