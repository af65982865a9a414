#!/usr/bin/env bash
# test/run.sh test|demo|bench [bench args]
#
# Everything `make test` and `make demo` need (and the PostgreSQL half of
# `make bench`), from a fresh machine with only
# PostgreSQL 15 on it: packages (apt-get when root), an assert-enabled build,
# a private installation (the server's own files copied beside ours, so the
# system PostgreSQL is never touched), a throwaway cluster on a Unix socket run
# by a non-root user, and the tests.  `test` runs them twice: on the normal
# build, then (regression and TAP tests) on a build with AddressSanitizer and
# UBSan, whose server runs with their runtimes preloaded; any sanitizer report
# is a failure (GNNVEC_SANITIZE=0 skips that phase).  Ends with one line
# "gnnvec: N passed, N failed" for everything.
set -uo pipefail

mode=${1:-test}
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

PG_CONFIG=${PG_CONFIG:-pg_config}
# postgresql-15: the server and its contrib modules (postgres_fdw and dblink,
# which the sharding test uses), copied into the private installation below
packages=(postgresql-15 postgresql-server-dev-15 libopenblas-dev libipc-run-perl)

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

# build FLAGS...: make with these flags, two jobs at a time (a 2-core machine
# builds in half the time); a failed build ends the run, a compiler warning
# counts as a failure
build() {
	log "building ($*)"
	if ! make -s -j2 "$@" >build.log 2>&1; then
		cat build.log
		echo "gnnvec: $passed passed, $((failed + 1)) failed"
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
	check_exports
}

# gnnvec.so exports only what PostgreSQL looks up by name (Makefile,
# gnnvec.exports; the parallel build's worker entry point too): another
# extension's same-named internals (pgvector's hnswbuild) must never bind
# to ours
check_exports() {
	local syms extra
	syms=$(nm -D --defined-only gnnvec.so | awk '{ print $3 }')
	extra=$(grep -v -E '^(Pg_magic_func|_PG_init|hnsw_parallel_build_main|pg_finfo_.*)$' <<<"$syms" |
		while read -r s; do
			grep -qx "pg_finfo_$s" <<<"$syms" || echo "$s"
		done || true)
	if [ -n "$extra" ]; then
		echo "exports: 0 passed, 1 failed (exported without an info record: $(echo $extra | head -c 300))"
		count 0 1
	else
		echo "exports: 1 passed, 0 failed (only PostgreSQL's entry points and SQL-callable functions)"
		count 1 0
	fi
}

# tests run an assert-enabled build; benchmarks and the demo, which print
# timings, must not
asserts=1
[ "$mode" = test ] || asserts=0
build_flags=(ASSERTS=$asserts)
# the demo builds its CAGRA index on the CPU: no need for the GPU module,
# whose nvcc build costs as much CPU time as all the rest of the build
[ "$mode" = demo ] && build_flags+=(USE_CUDA=0)
build "${build_flags[@]}"

# --- a private installation the server user can read ------------------------
# the previous run's directory goes; this one stays for inspection
[ -L tmp/last-$mode ] && rm -rf "$(readlink tmp/last-$mode)"
work=$(mktemp -d /tmp/gnnvec-$mode.XXXXXX)
chmod 755 "$work"
mkdir -p tmp
ln -sfn "$work" tmp/last-$mode
# install_private FLAGS...: the server's files plus gnnvec built with FLAGS, under
# $inst.  The server finds share/ and lib/ relative to its own binary, so a
# copy of the installation plus ours under DESTDIR is a complete, private
# server.
install_private() {
	mkdir -p "$inst"
	tar -C / -cf - "${bindir#/}" "${pkglibdir#/}" "${sharedir#/}" | tar -C "$inst" -xf -
	make -s install "$@" DESTDIR="$inst" >>build.log 2>&1 || { tail build.log; exit 1; }
	PATH="$inst$bindir:$PATH"
	PG_REGRESS="$inst$pkglibdir/pgxs/src/test/regress/pg_regress"
}
inst=$work/inst
syspath=$PATH
install_private "${build_flags[@]}"
export PATH PG_REGRESS

# Tests run as a non-root user: the server refuses root.
if [ "$(id -u)" = 0 ]; then
	runas=(runuser -u postgres --)
else
	runas=()
fi
cp -r sql_tests expected test "$work"/
if [ "$(id -u)" = 0 ]; then chown -R postgres "$work"; fi
as_server_user() { "${runas[@]}" env HOME="$work" PATH="$PATH" PG_REGRESS="$PG_REGRESS" "$@"; }

# OpenBLAS picks its kernels from the CPU model when it loads; on virtual
# machines that report a generic model it falls back to SSE3, 4-5x slower.
# Tell it what the CPU can do (the server inherits this environment).
# A value the caller set is kept; a benchmark says when it leaves this
# CPU's AVX-512 kernels unused (a fifth of a CAGRA build's CPU time on one
# machine, docs/cagra.md).
if [ -z "${OPENBLAS_CORETYPE:-}" ]; then
	if grep -qw avx512f /proc/cpuinfo; then
		export OPENBLAS_CORETYPE=SkylakeX
	elif grep -qw avx2 /proc/cpuinfo; then
		export OPENBLAS_CORETYPE=Haswell
	fi
elif [ "$mode" = bench ] && [ "$OPENBLAS_CORETYPE" = Haswell ] && grep -qw avx512f /proc/cpuinfo; then
	log "note: OPENBLAS_CORETYPE=Haswell from the environment: OpenBLAS's AVX-512 kernels are not used on this CPU"
fi

# each phase's cluster, logs and results are under $phase
phase=$work
data=$phase/data
sock=$work/sock
# GNNVEC_TEST_PORT: another port, for runs side by side in other checkouts
port=${GNNVEC_TEST_PORT:-54329}
mkdir -p "$sock"
[ "$(id -u)" = 0 ] && chown postgres "$sock"
export PGHOST=$sock PGPORT=$port

start_cluster() {
	as_server_user initdb -D "$data" -U postgres --no-sync -A trust >"$phase/initdb.log" 2>&1 ||
		{ cat "$phase/initdb.log"; return 1; }
	cat >>"$data/postgresql.conf" <<-EOF
		listen_addresses = ''
		unix_socket_directories = '$sock'
		port = $port
		fsync = off
		max_parallel_maintenance_workers = 2
	EOF
	if [ "$mode" = test ]; then
		# No autovacuum in the test cluster: an autoanalyze of any table
		# holds a snapshot that stops a test's VACUUM from removing the
		# rows it just deleted (hnsw_scan_cache once saw no elements freed
		# under the sanitizers), and whether it had run changed no plan.
		cat >>"$data/postgresql.conf" <<-EOF
			autovacuum = off
		EOF
	fi
	if [ "$mode" = bench ]; then
		# preloaded, as a production server would have it: the scan caches
		# are then shared (gnnvec.shared_scan_cache_size, default 128MB)
		cat >>"$data/postgresql.conf" <<-EOF
			shared_preload_libraries = 'gnnvec'
			shared_buffers = 2GB
			maintenance_work_mem = 2GB
			max_parallel_maintenance_workers = 1
			jit = off
		EOF
	fi
	as_server_user pg_ctl -D "$data" -l "$phase/server.log" -w start >/dev/null ||
		{ cat "$phase/server.log"; return 1; }
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
# REGRESS_TESTS / TAP_TESTS: run only these (names, or TAP file globs)
tests=${REGRESS_TESTS:-$(cd sql_tests && ls *.sql | sed 's/\.sql$//' | sort)}
tap_tests=${TAP_TESTS:-test/t/*.pl}

# run_regress: the regression tests, on the running cluster, results under
# $phase/regress
run_regress() {
	local rc p f
	mkdir -p "$phase/regress"
	ln -s "$work/sql_tests" "$phase/regress/sql"
	ln -s "$work/expected" "$phase/regress/expected"
	[ "$(id -u)" = 0 ] && chown -R postgres "$phase/regress"
	# The extension exists before the first test runs, so every test's
	# CREATE EXTENSION IF NOT EXISTS says "already exists" whatever the order.
	as_server_user "$PG_REGRESS" --host="$sock" --port=$port \
		--inputdir="$phase/regress" --outputdir="$phase/regress" \
		--bindir="$inst$bindir" --dbname=gnnvec_regress --load-extension=gnnvec \
		$tests | tee "$phase/regress.log"
	rc=${PIPESTATUS[0]}
	p=$(grep -cE '\.\.\. ok|^ok ' "$phase/regress.log")
	f=$(grep -cE '\.\.\. FAILED|^not ok ' "$phase/regress.log")
	[ "$rc" != 0 ] && [ "$f" = 0 ] && f=1
	count "$p" "$f"
	if [ "$f" != 0 ] && [ -f "$phase/regress/regression.diffs" ]; then
		cp "$phase/regress/regression.diffs" "$root/regression.diffs"
		head -200 "$phase/regress/regression.diffs"
	fi
}

# run_tap: the TAP tests, each on clusters of its own under $phase/tmp_check
run_tap() {
	local rc total notok f
	ls $tap_tests >/dev/null 2>&1 || return 0
	log "TAP tests"
	(cd "$work" && as_server_user env TESTDIR="$phase" \
		PERL5LIB="$inst$pkglibdir/pgxs/src/test/perl" prove -v $tap_tests) >"$phase/tap.log" 2>&1
	rc=$?
	grep -E '^(ok|not ok)|^t/|^test/|Failed|Result|Tests=' "$phase/tap.log"
	total=$(sed -nE 's/.*Tests=([0-9]+),.*/\1/p' "$phase/tap.log" | tail -1)
	notok=$(grep -cE '^\s*not ok' "$phase/tap.log")
	f=$notok
	[ $rc -ne 0 ] && [ "$f" = 0 ] && f=1
	count $((${total:-0} - notok)) "$f"
	[ $rc -ne 0 ] && tail -50 "$phase/tap.log"
}

log "regression tests"
start_cluster || { echo "gnnvec: $passed passed, $((failed + 1)) failed"; exit 1; }
run_regress

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
run_tap

# --- the same on a sanitized build ----------------------------------------------
# gnnvec.so built with AddressSanitizer and UBSan, in an installation of its
# own whose postgres is a wrapper that preloads their runtimes (the server
# itself is not instrumented; the library cannot load without them) and sends
# their reports to files under $phase/sanitizer.  ASan aborts the backend at
# its first report (memory is not to be trusted after it); UBSan reports and
# goes on.  Every report is a failure.
sanitize_phase() {
	local asan ubsan reports r
	asan=$(gcc -print-file-name=libasan.so)
	ubsan=$(gcc -print-file-name=libubsan.so)
	if [ ! -e "$asan" ] || [ ! -e "$ubsan" ]; then
		echo "sanitize: 0 passed, 1 failed (gcc's libasan/libubsan not found)"
		count 0 1
		return
	fi
	# the private installation's pg_config would point the build at itself
	PATH=$syspath
	build "${build_flags[@]}" SANITIZE=1
	phase=$work/sanitize
	data=$phase/data
	inst=$phase/inst
	mkdir -p "$phase/sanitizer"
	install_private "${build_flags[@]}" SANITIZE=1
	# A preloaded libasan initialises late, inside the first malloc: that of
	# libgpg-error's constructor, in bindtextdomain, which holds gettext's
	# lock.  Its initialisation looks up swift_demangle and, when the lookup
	# fails, dlerror() translates the message and releases that lock; the
	# postgres's own bindtextdomain then hangs.  A swift_demangle of our own
	# (which demangles nothing) keeps dlerror() out of it.
	printf '%s\n' '#include <stddef.h>' \
		'char *swift_demangle(const char *n, size_t l, char *b, size_t *bl, unsigned f);' \
		'char *swift_demangle(const char *n, size_t l, char *b, size_t *bl, unsigned f) { return NULL; }' \
		>"$phase/no_swift_demangle.c"
	gcc -shared -fPIC -o "$phase/no_swift_demangle.so" "$phase/no_swift_demangle.c" || exit 1
	# The server records its own path (in postmaster.opts, for pg_ctl
	# restart): exec -a makes that the wrapper's.
	mv "$inst$bindir/postgres" "$inst$bindir/postgres.bin"
	cat >"$inst$bindir/postgres" <<-EOF
		#!/bin/bash
		export LD_PRELOAD="$(readlink -f "$asan") $(readlink -f "$ubsan") $phase/no_swift_demangle.so"
		export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:log_path=$phase/sanitizer/asan"
		export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=0:log_path=$phase/sanitizer/ubsan"
		exec -a "\$0" "\$0.bin" "\$@"
	EOF
	chmod 755 "$inst$bindir/postgres"
	[ "$(id -u)" = 0 ] && chown -R postgres "$phase"

	log "regression tests (sanitized)"
	start_cluster || { echo "gnnvec: $passed passed, $((failed + 1)) failed"; exit 1; }
	run_regress
	stop_cluster
	run_tap

	# reports, wherever they went: the files, and any that reached a server
	# log instead (a process that could not open its log file)
	pattern='Sanitizer|ASan runtime|runtime error:'
	reports=$( (ls "$phase"/sanitizer/* 2>/dev/null
		grep -lE "$pattern" "$phase/server.log" "$phase"/tmp_check/log/*.log 2>/dev/null) | sort -u)
	for r in $reports; do
		echo "---- sanitizer report: $r"
		grep -m1 -A60 -E "$pattern" "$r"
	done
	r=$(echo -n "$reports" | grep -c .)
	echo "sanitizer: $((r == 0)) passed, $r failed ($r report files)"
	count $((r == 0)) "$r"
}
[ "${GNNVEC_SANITIZE:-1}" = 1 ] && sanitize_phase

echo "gnnvec: $passed passed, $failed failed"
[ "$failed" = 0 ]
