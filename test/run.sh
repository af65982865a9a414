#!/usr/bin/env bash
# test/run.sh test|demo|bench [bench args]
#
# Everything `make test` and `make demo` need (and the PostgreSQL half of
# `make bench`), from a fresh machine with only
# PostgreSQL 15 on it: packages (apt-get when root), an assert-enabled build,
# a private installation (the server's own files copied beside ours, so the
# system PostgreSQL is never touched), a throwaway cluster on a Unix socket run
# by a non-root user, and the tests.  Ends with "gnnvec: N passed, N failed".
set -uo pipefail

mode=${1:-test}
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

PG_CONFIG=${PG_CONFIG:-pg_config}
packages=(postgresql-server-dev-15 libopenblas-dev libipc-run-perl)

log() { printf '== %s\n' "$*"; }

# --- dependencies ----------------------------------------------------------
missing=()
for p in "${packages[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
# node and npm run the pgvector client test; any installation of them will do
command -v node >/dev/null || missing+=(nodejs)
command -v npm >/dev/null || missing+=(npm)
if [ ${#missing[@]} -gt 0 ]; then
	if [ "$(id -u)" = 0 ]; then
		log "installing ${missing[*]}"
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null ||
			{ echo "apt-get install failed"; exit 1; }
	else
		echo "missing packages; run:"
		echo "  sudo apt-get install -y ${missing[*]}"
		exit 1
	fi
fi

bindir=$($PG_CONFIG --bindir)
pkglibdir=$($PG_CONFIG --pkglibdir)
sharedir=$($PG_CONFIG --sharedir)

# --- build -----------------------------------------------------------------
passed=0
failed=0
count() { passed=$((passed + $1)); failed=$((failed + $2)); }

# Add a test program's "NAME: N passed, N failed" line (its last one) to the
# totals; no such line, or a non-zero exit with no failure counted, is a failure.
count_output() {
	local out=$1 rc=$2 line p f
	line=$(echo "$out" | grep -E '^[a-z_0-9]+: [0-9]+ passed, [0-9]+ failed' | tail -1)
	if [ -z "$line" ]; then
		p=0 f=1
	else
		p=$(echo "$line" | sed -E 's/.*: ([0-9]+) passed.*/\1/')
		f=$(echo "$line" | sed -E 's/.* ([0-9]+) failed.*/\1/')
	fi
	[ "$rc" -ne 0 ] && [ "$f" = 0 ] && f=1
	count "$p" "$f"
}

# tests run an assert-enabled build; benchmarks must not
asserts=1
[ "$mode" = bench ] && asserts=0
log "building (ASSERTS=$asserts)"
if ! make -s ASSERTS=$asserts >build.log 2>&1; then
	cat build.log
	echo "gnnvec: $passed passed, 1 failed"
	exit 1
fi
if grep -q 'warning:' build.log; then
	grep -B2 -A4 'warning:' build.log
	echo "build: 0 passed, 1 failed (compiler warnings)"
	count 0 1
else
	echo "build: 1 passed, 0 failed (no compiler warnings)"
	count 1 0
fi

# --- a private installation the server user can read ------------------------
# the previous run's directory goes; this one stays for inspection
[ -L tmp/last-$mode ] && rm -rf "$(readlink tmp/last-$mode)"
work=$(mktemp -d /tmp/gnnvec-$mode.XXXXXX)
chmod 755 "$work"
mkdir -p tmp
ln -sfn "$work" tmp/last-$mode
inst=$work/inst
mkdir -p "$inst"
# The server finds share/ and lib/ relative to its own binary, so a copy of
# the installation plus ours under DESTDIR is a complete, private server.
tar -C / -cf - "${bindir#/}" "${pkglibdir#/}" "${sharedir#/}" | tar -C "$inst" -xf -
make -s install ASSERTS=$asserts DESTDIR="$inst" >>build.log 2>&1 || { tail build.log; exit 1; }
export PATH="$inst$bindir:$PATH"
export PG_REGRESS="$inst$pkglibdir/pgxs/src/test/regress/pg_regress"

# Tests run as a non-root user: the server refuses root.
if [ "$(id -u)" = 0 ]; then
	runas=(runuser -u postgres --)
else
	runas=()
fi
cp -r sql_tests expected test "$work"/
mkdir -p "$work/regress"
if [ "$(id -u)" = 0 ]; then chown -R postgres "$work"; fi
as_server_user() { "${runas[@]}" env HOME="$work" PATH="$PATH" PG_REGRESS="$PG_REGRESS" "$@"; }

# OpenBLAS picks its kernels from the CPU model when it loads; on virtual
# machines that report a generic model it falls back to SSE3, 4-5x slower.
# Tell it what the CPU can do (the server inherits this environment).
if [ -z "${OPENBLAS_CORETYPE:-}" ]; then
	if grep -qw avx512f /proc/cpuinfo; then
		export OPENBLAS_CORETYPE=SkylakeX
	elif grep -qw avx2 /proc/cpuinfo; then
		export OPENBLAS_CORETYPE=Haswell
	fi
fi

data=$work/data
sock=$work/sock
# GNNVEC_TEST_PORT: another port, for runs side by side in other checkouts
port=${GNNVEC_TEST_PORT:-54329}
mkdir -p "$sock"
[ "$(id -u)" = 0 ] && chown postgres "$sock"
export PGHOST=$sock PGPORT=$port

start_cluster() {
	as_server_user initdb -D "$data" -U postgres --no-sync -A trust >"$work/initdb.log" 2>&1 ||
		{ cat "$work/initdb.log"; return 1; }
	cat >>"$data/postgresql.conf" <<-EOF
		listen_addresses = ''
		unix_socket_directories = '$sock'
		port = $port
		fsync = off
		max_parallel_maintenance_workers = 2
	EOF
	if [ "$mode" = bench ]; then
		cat >>"$data/postgresql.conf" <<-EOF
			shared_buffers = 2GB
			maintenance_work_mem = 2GB
			max_parallel_maintenance_workers = 1
			jit = off
		EOF
	fi
	as_server_user pg_ctl -D "$data" -l "$work/server.log" -w start >/dev/null ||
		{ cat "$work/server.log"; return 1; }
}
stop_cluster() { as_server_user pg_ctl -D "$data" -m fast -w stop >/dev/null 2>&1 || true; }
trap stop_cluster EXIT

if [ "$mode" = demo ]; then
	start_cluster || exit 1
	as_server_user bash "$work/test/demo.sh"
	exit $?
fi
if [ "$mode" = bench ]; then
	# bench/pg_bench.sh DATASET_DIR OUT_DIR: both readable/writable by the server user
	cp -r bench "$work"/
	mkdir -p "$work/bench/out"
	# PGVECTOR_SRC: a pgvector source tree, installed beside ours for the
	# same-run comparison (bench/run.sh real)
	if [ -n "${PGVECTOR_SRC:-}" ]; then
		bash bench/install_pgvector.sh "$PGVECTOR_SRC" "$inst" "$bindir/pg_config" >>build.log 2>&1 ||
			{ tail -20 build.log; exit 1; }
	fi
	[ "$(id -u)" = 0 ] && chown -R postgres "$work/bench"
	start_cluster || exit 1
	# BENCH_SCRIPT: another runner under bench/ (bench/run.sh rerank)
	as_server_user bash "$work/bench/${BENCH_SCRIPT:-pg_bench.sh}" "$work/bench/data/${2:-clustered-100k-128}" "$work/bench/out"
	rc=$?
	cp -r "$work"/bench/out/* "$root/bench/out/" 2>/dev/null
	exit $rc
fi

# --- unit tests of the PostgreSQL-free code ---------------------------------
log "unit tests"
if make -s unit-bins >>build.log 2>&1; then
	for t in test/unit/bin/test_*; do
		out=$("$t" 2>&1)
		rc=$?
		echo "$out"
		count_output "$out" $rc
	done
else
	grep -A5 -E 'error|warning' build.log | head -40
	echo "unit: 0 passed, 1 failed (unit tests do not build)"
	count 0 1
fi

# --- regression tests (pg_regress) -------------------------------------------
log "regression tests"
start_cluster || { echo "gnnvec: $passed passed, $((failed + 1)) failed"; exit 1; }
ln -s "$work/sql_tests" "$work/regress/sql"
ln -s "$work/expected" "$work/regress/expected"
# The extension exists before the first test runs, so every test's
# CREATE EXTENSION IF NOT EXISTS says "already exists" whatever the order.
# REGRESS_TESTS / TAP_TESTS: run only these (names, or TAP file globs)
tests=${REGRESS_TESTS:-$(cd sql_tests && ls *.sql | sed 's/\.sql$//' | sort)}
as_server_user "$PG_REGRESS" --host="$sock" --port=$port \
	--inputdir="$work/regress" --outputdir="$work/regress" \
	--bindir="$inst$bindir" --dbname=gnnvec_regress --load-extension=gnnvec \
	$tests | tee "$work/regress.log"
rc=${PIPESTATUS[0]}
p=$(grep -cE '\.\.\. ok|^ok ' "$work/regress.log")
f=$(grep -cE '\.\.\. FAILED|^not ok ' "$work/regress.log")
[ "$rc" != 0 ] && [ "$f" = 0 ] && f=1
count "$p" "$f"
if [ "$f" != 0 ] && [ -f "$work/regress/regression.diffs" ]; then
	cp "$work/regress/regression.diffs" "$root/regression.diffs"
	head -200 "$work/regress/regression.diffs"
fi

# --- a real pgvector client (node-postgres + pgvector from npm) -------------
log "pgvector client compatibility"
client=$work/test/client
if (cd "$client" && as_server_user npm install --silent --no-audit --no-fund pg@8 pgvector@0.2 pg-copy-streams@6 >/dev/null 2>&1); then
	out=$(cd "$client" && as_server_user node pgvector_client.js 2>&1)
	rc=$?
	echo "$out"
	count_output "$out" $rc
else
	echo "client: npm install pg pgvector pg-copy-streams failed (npm registry unreachable?)"
	count 0 1
fi
stop_cluster

# --- TAP tests ----------------------------------------------------------------
tap_tests=${TAP_TESTS:-test/t/*.pl}
if ls $tap_tests >/dev/null 2>&1; then
	log "TAP tests"
	(cd "$work" && as_server_user env PERL5LIB="$inst$pkglibdir/pgxs/src/test/perl" \
		prove -v $tap_tests) >"$work/tap.log" 2>&1
	rc=$?
	grep -E '^(ok|not ok)|^t/|^test/|Failed|Result|Tests=' "$work/tap.log"
	total=$(sed -nE 's/.*Tests=([0-9]+),.*/\1/p' "$work/tap.log" | tail -1)
	notok=$(grep -cE '^\s*not ok' "$work/tap.log")
	f=$notok
	[ $rc -ne 0 ] && [ "$f" = 0 ] && f=1
	count $((${total:-0} - notok)) "$f"
	[ $rc -ne 0 ] && tail -50 "$work/tap.log"
fi

echo "gnnvec: $passed passed, $failed failed"
[ "$failed" = 0 ]
