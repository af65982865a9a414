# gnnhnsw on a streaming replica: after the build, after inserts and after
# deletes + VACUUM, the standby returns exactly what the primary returns,
# and its copy of the index passes gnnvec_index_check.  It runs for an
# index built in parallel by HNSW insertion and for one built with
# build_method = 'cagra' (CPU threads).  The primary runs with
# wal_consistency_checking = 'generic': every GenericXLog record carries the
# page as the primary left it, and the standby's replay must produce exactly
# that page or the standby stops.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

# Primary + streaming standby; the index is built with build_method $build.
sub replica_scenario
{
	my ($build) = @_;

	my $primary = PostgreSQL::Test::Cluster->new("primary_$build");
	$primary->init(allows_streaming => 1);
	# (wal_keep_size: the WAL stays for pg_waldump to count those records)
	$primary->append_conf('postgresql.conf', "wal_consistency_checking = 'generic'\nwal_keep_size = '1GB'\n");
	$primary->start;
	$primary->safe_psql('postgres', q{
		CREATE EXTENSION gnnvec;
		CREATE TABLE items (id int PRIMARY KEY, v vector(12));
		SELECT setseed(0.1);
		INSERT INTO items SELECT i, (SELECT array_agg(random()::real) FROM generate_series(1, 12) WHERE i > 0)::vector
			FROM generate_series(1, 3000) i;
		CREATE TABLE queries AS SELECT i AS qid, (SELECT array_agg(random()::real) FROM generate_series(1, 12) WHERE i > 0)::vector AS q
			FROM generate_series(1, 30) i;
	});
	$primary->backup('b1');
	my $standby = PostgreSQL::Test::Cluster->new("standby_$build");
	$standby->init_from_backup($primary, 'b1', has_streaming => 1);
	$standby->start;

	my $results_sql = q{
		SET enable_seqscan = off;
		SELECT string_agg(qid || ':' || ids, ' ' ORDER BY qid) FROM (
			SELECT qid, (SELECT string_agg(id::text, ',') FROM
				(SELECT id FROM items ORDER BY v <-> q LIMIT 10) s) AS ids
			FROM queries) r;
	};
	my $plan_sql = q{
		SET enable_seqscan = off;
		EXPLAIN (COSTS OFF) SELECT id FROM items ORDER BY v <-> (SELECT q FROM queries LIMIT 1) LIMIT 10;
	};

	# Generic records written since the last call that carry a page image for
	# the standby's consistency check.
	my $since = $primary->lsn('flush');
	my $checked_records = sub {
		my $end = $primary->lsn('flush');
		my ($stdout, $stderr) = run_command([ 'pg_waldump', '-p', $primary->data_dir . '/pg_wal',
			'-s', $since, '-e', $end, '-r', 'Generic' ]);
		diag("pg_waldump: $stderr") if $stderr ne '';
		$since = $end;
		return scalar(() = $stdout =~ /FPW for WAL verification/g);
	};

	# a closure: a named sub would keep the first call's nodes
	my $compare = sub {
		my ($what) = @_;
		$what = "$build: $what";
		local $Test::Builder::Level = $Test::Builder::Level + 1;
		$primary->wait_for_catchup($standby);
		unlike(slurp_file($standby->logfile), qr/inconsistent page/,
			"$what: the standby's replay matches the primary's pages");
		my $p = $primary->safe_psql('postgres', $results_sql);
		my $s = $standby->safe_psql('postgres', $results_sql);
		ok(length($p) > 100, "$what: primary answers");
		is($s, $p, "$what: standby returns identical results");
		like($standby->safe_psql('postgres', $plan_sql), qr/Index Scan using items_v/,
			"$what: standby uses the index");
		is($standby->safe_psql('postgres', q{SELECT count(*) FROM gnnvec_index_check('items_v')}),
			'0', "$what: standby's index passes the check");
	};

	# a parallel build (two workers and the leader, or CAGRA's threads): its
	# pages reach the standby through log_newpage_range like a serial build's
	my ($ret, $out, $err) = $primary->psql('postgres', qq{
		ALTER TABLE items SET (parallel_workers = 2);
		SET max_parallel_maintenance_workers = 2;
		SET client_min_messages = debug1;
		CREATE INDEX items_v ON items USING gnnhnsw (v) WITH (build_method = '$build');
	});
	is($ret, 0, "$build: parallel build succeeds");
	like($err, $build eq 'cagra' ? qr/gnnhnsw cagra \(cpu, \d+ threads/ : qr/gnnhnsw: parallel build/,
		"$build: the build ran in parallel");
	$compare->('after parallel build');

	$primary->safe_psql('postgres', q{
		INSERT INTO items SELECT i, (SELECT array_agg(random()::real) FROM generate_series(1, 12) WHERE i > 0)::vector
			FROM generate_series(3001, 4000) i;
		INSERT INTO items SELECT id + 1000, v FROM items WHERE id BETWEEN 3001 AND 3100;
	});
	ok($checked_records->() > 1000, "$build: the inserts' generic records carry pages to check");
	$compare->('after inserts');

	# a quarter of the elements go: their neighbours' lists are repaired
	$primary->safe_psql('postgres', 'DELETE FROM items WHERE id % 4 = 0');
	$checked_records->();
	$primary->safe_psql('postgres', 'VACUUM items');
	ok($checked_records->() > 100, "$build: VACUUM's generic records carry pages to check");
	$compare->('after delete and vacuum');

	$primary->safe_psql('postgres', q{
		INSERT INTO items SELECT i, (SELECT array_agg(random()::real) FROM generate_series(1, 12) WHERE i > 0)::vector
			FROM generate_series(5001, 5600) i;
	});
	$compare->('after reusing deleted space');

	# the standby's info agrees with the primary's
	$primary->wait_for_catchup($standby);
	my $info = q{SELECT elements, deleted_elements, heap_tids, pages FROM gnnvec_index_info('items_v')};
	is($standby->safe_psql('postgres', $info), $primary->safe_psql('postgres', $info),
		"$build: standby and primary index structure agree");
	$standby->stop;
	$primary->stop;
}

replica_scenario($_) for ('hnsw', 'cagra');

done_testing();
