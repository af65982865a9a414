# gnnhnsw crash safety of maintenance: the backend running a VACUUM, a
# serial CREATE INDEX and a parallel CREATE INDEX (workers running) is
# killed with SIGKILL once pg_stat_progress_* shows it inside the index's
# code.  The postmaster then restarts every process and replays the WAL, as
# after a crash of the whole server.  Afterwards:
#  - VACUUM: the index passes gnnvec_index_check, every live row finds
#    itself through it, and a new VACUUM finishes the job;
#  - CREATE INDEX: the index does not exist (the build's transaction never
#    committed; or, if the kill came just after the commit, it is sound),
#    and a fresh CREATE INDEX builds a sound one.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib $FindBin::RealBin;
use GnnvecIndex;
use IPC::Run;

my $node = PostgreSQL::Test::Cluster->new('crash_maint');
$node->init;
$node->append_conf('postgresql.conf', "autovacuum = off\nrestart_after_crash = on\nmax_parallel_maintenance_workers = 2\n");
$node->start;
$node->safe_psql('postgres', q{
	CREATE EXTENSION gnnvec;
	CREATE TABLE items (id int PRIMARY KEY, v vector(32)) WITH (autovacuum_enabled = false);
	SELECT setseed(0.5);
	INSERT INTO items SELECT i, (SELECT array_agg(random()::real) FROM generate_series(1, 32) WHERE i > 0)::vector
		FROM generate_series(1, 6000) i;
	CREATE INDEX items_v ON items USING gnnhnsw (v) WITH (m = 16, ef_construction = 64);
	-- Wait until the query returns the PID of a backend and return it; the
	-- COMMIT lets each round see the other backends' progress afresh.
	CREATE PROCEDURE wait_for_pid(query text, INOUT pid int) LANGUAGE plpgsql AS $$
	BEGIN
		LOOP
			EXECUTE query INTO pid;
			EXIT WHEN pid IS NOT NULL;
			COMMIT;
			PERFORM pg_sleep(0.001);
		END LOOP;
	END $$;
});

# Run these statements in a session of their own, in the background; it
# dies in the crash.
sub start_sql
{
	my @cmd = ('psql', '-X', '-q', '-d', $node->connstr('postgres'));
	my ($out, $err) = ('', '');
	push @cmd, '-c', $_ for @_;
	return IPC::Run::start(\@cmd, '>', \$out, '2>', \$err);
}

# Wait until $query returns the PID of a backend that is mid-operation (and
# still returns it a moment later, when $settle seconds are given), kill it
# with SIGKILL, and wait until the server has gone through crash recovery.
sub kill_when
{
	my ($what, $query, $settle) = @_;
	local $Test::Builder::Level = $Test::Builder::Level + 1;
	my $call = "SET statement_timeout = '120s'; CALL wait_for_pid(\$q\$$query\$q\$, NULL)";
	my ($ret, $pid) = $node->psql('postgres', $call);

	if ($pid ne '' && $settle)
	{
		select(undef, undef, undef, $settle);
		($ret, my $again) = $node->psql('postgres', $call);
		$pid = '' if $again ne $pid;
	}
	# (die, not BAIL_OUT: the other test files still run)
	ok($pid ne '', "$what: the backend was caught mid-operation")
	  or die "$what: never caught mid-operation";
	my $log_offset = -s $node->logfile;
	kill 'KILL', $pid if $pid ne '';
	$node->wait_for_log(qr/database system is ready to accept connections/, $log_offset);
	$node->poll_query_until('postgres', 'SELECT true');
	like(slurp_file($node->logfile, $log_offset), qr/was terminated by signal 9/,
		"$what: the server went through crash recovery");
}

# The index passes the check and every row of the table finds itself (a
# row at distance 0: a duplicate vector may come first) through it, at an
# ef_search (400) where a sound graph misses none of these 8000 rows (at
# 100 a fresh build missed one now and then: the search is approximate).
sub check_index
{
	my ($what, $index) = @_;
	local $Test::Builder::Level = $Test::Builder::Level + 1;

	is($node->safe_psql('postgres', qq{
		SELECT string_agg(blkno || '/' || offnum || ': ' || problem, '; ') FROM gnnvec_index_check('$index')}),
		'', "$what: gnnvec_index_check reports nothing");
	like($node->safe_psql('postgres', q{
		SET enable_seqscan = off;
		EXPLAIN (COSTS OFF) SELECT id FROM items ORDER BY v <-> (SELECT v FROM items LIMIT 1) LIMIT 1;
	}), qr/Index Scan using $index/, "$what: lookups use the index");
	is(GnnvecIndex::self_lookup_misses($node, 'items', 400), '0', "$what: every live row is found through the index");
}


# --- VACUUM, killed while it works on the index -------------------------------
# A third of the rows go; the cost delay keeps VACUUM in the index (removing
# heap TIDs, then repairing neighbour lists, page by page) for many seconds.
$node->safe_psql('postgres', 'DELETE FROM items WHERE id % 3 = 0');
my $vacuum = start_sql('SET vacuum_cost_delay = 2', 'SET vacuum_cost_limit = 20', 'VACUUM items');
kill_when('VACUUM',
	q{SELECT pid FROM pg_stat_progress_vacuum WHERE phase = 'vacuuming indexes'}, 1);
$vacuum->finish;
check_index('after a crash in VACUUM', 'items_v');
is($node->safe_psql('postgres', 'SELECT count(*) FROM items WHERE id % 3 = 0'), '0',
	'the DELETE stayed committed');
$node->safe_psql('postgres', 'VACUUM items');
check_index('after the crash, a new VACUUM', 'items_v');
is($node->safe_psql('postgres', q{SELECT heap_tids FROM gnnvec_index_info('items_v')}),
	$node->safe_psql('postgres', 'SELECT count(*) FROM items'),
	'after the new VACUUM the index holds one heap TID per row');
$node->safe_psql('postgres', 'DROP INDEX items_v');

# --- VACUUM at m = 8, killed while it works on the index ------------------------
# Short lists: a repair that gave up a live member's in-edge, or deleted
# elements marked before the live ones reach each other without them, left
# live elements unreachable after such a kill (2 of 2 runs before VACUUM
# kept live members and walked the graph before marking).
$node->safe_psql('postgres', q{
	CREATE TABLE small (id int PRIMARY KEY, v vector(32)) WITH (autovacuum_enabled = false);
	SELECT setseed(0.5);
	INSERT INTO small SELECT i, (SELECT array_agg(random()::real) FROM generate_series(1, 32) WHERE i > 0)::vector
		FROM generate_series(1, 6000) i;
	CREATE INDEX small_v ON small USING gnnhnsw (v) WITH (m = 8, ef_construction = 32);
	DELETE FROM small WHERE id % 3 = 0;
});
$vacuum = start_sql('SET vacuum_cost_delay = 2', 'SET vacuum_cost_limit = 20', 'VACUUM small');
kill_when('VACUUM at m = 8',
	q{SELECT pid FROM pg_stat_progress_vacuum WHERE phase = 'vacuuming indexes'}, 1);
$vacuum->finish;
is($node->safe_psql('postgres', q{
	SELECT string_agg(blkno || '/' || offnum || ': ' || problem, '; ') FROM gnnvec_index_check('small_v')}),
	'', 'after a crash in VACUUM at m = 8: gnnvec_index_check reports nothing');
$node->safe_psql('postgres', 'DROP TABLE small');

# --- CREATE INDEX, killed mid-build ---------------------------------------------
sub build_crash
{
	my ($what, $workers, $query) = @_;

	# The session stays (pg_sleep) after the build, so that the kill always
	# finds its backend: a serial build's last phase is short, and once the
	# session had ended, the kill hit nothing and no crash recovery came.
	my $build = start_sql("SET max_parallel_maintenance_workers = $workers",
		'CREATE INDEX items_built ON items USING gnnhnsw (v) WITH (m = 16, ef_construction = 64)',
		'SELECT pg_sleep(600)');
	kill_when($what, $query, 0);
	$build->finish;
	# The kill lands in the phase the query caught, or, when that phase is
	# over within the moment the kill takes, after the build committed: then
	# the index must be whole.
	if ($node->safe_psql('postgres', q{SELECT count(*) FROM pg_class WHERE relname = 'items_built'}) eq '0')
	{
		pass("$what: the interrupted build left no index");
	}
	else
	{
		note("$what: the build committed before the kill");
		check_index("$what, committed before the kill", 'items_built');
		$node->safe_psql('postgres', 'DROP INDEX items_built');
	}
	$node->safe_psql('postgres', qq{
		SET max_parallel_maintenance_workers = $workers;
		CREATE INDEX items_built ON items USING gnnhnsw (v) WITH (m = 16, ef_construction = 64);
	});
	check_index("$what, then a fresh build", 'items_built');
	$node->safe_psql('postgres', 'DROP INDEX items_built');
}

# more rows, so that the builds take long enough to be caught
$node->safe_psql('postgres', q{
	INSERT INTO items SELECT i, (SELECT array_agg(random()::real) FROM generate_series(1, 32) WHERE i > 0)::vector
		FROM generate_series(6001, 10000) i;
	ALTER TABLE items SET (parallel_workers = 2);
});
# a serial build while it writes the graph's pages (not WAL-logged until the
# end: log_newpage_range)
build_crash('serial CREATE INDEX', 0, q{
	SELECT pid FROM pg_stat_progress_create_index WHERE phase = 'building index: writing pages'});
# a parallel build while its workers insert into the shared graph
build_crash('parallel CREATE INDEX', 2, q{
	SELECT p.pid FROM pg_stat_progress_create_index p
	WHERE p.phase = 'building index: loading tuples' AND EXISTS (SELECT 1 FROM pg_stat_activity a
		WHERE a.backend_type = 'parallel worker' AND a.leader_pid = p.pid)});

done_testing();
