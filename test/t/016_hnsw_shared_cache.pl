# The shared scan cache (gnnvec preloaded, gnnvec.shared_scan_cache_size):
# what one session's scans read, a new session finds; scans through it
# return what scans without any cache return; VACUUM's new generation
# clears it; gnnvec_index_check checks it against the pages; an index that
# finds no directory entry left falls back to the backend's own cache;
# under concurrent scans, inserts, deletes and VACUUM nothing fails and
# recall holds; and a streaming standby's cache follows the primary's
# VACUUM through the WAL.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib $FindBin::RealBin;
use GnnvecIndex;

my $node = PostgreSQL::Test::Cluster->new('shared_cache');
$node->init(allows_streaming => 1);
$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'gnnvec'
gnnvec.shared_scan_cache_size = '4MB'
autovacuum = off
max_connections = 30
});
$node->start;
is($node->safe_psql('postgres', 'SHOW gnnvec.shared_scan_cache_size'), '4MB',
	'the size is set at server start');
$node->safe_psql('postgres', q{
	CREATE EXTENSION gnnvec;
	CREATE TABLE t (id int PRIMARY KEY, v vector(16));
	SELECT setseed(0.3);
	INSERT INTO t SELECT i, (SELECT array_agg(random()::real) FROM generate_series(1, 16) WHERE i > 0)::vector
		FROM generate_series(1, 3000) i;
	CREATE INDEX t_v ON t USING gnnhnsw (v) WITH (m = 8, ef_construction = 32);
	CREATE TABLE q AS SELECT id AS qid, v AS q FROM t WHERE id % 60 = 0;
	CREATE FUNCTION top10() RETURNS TABLE (qid int, ids int[]) LANGUAGE sql AS $$
		SELECT qid, array(SELECT id FROM t ORDER BY v <-> q LIMIT 10) FROM q ORDER BY qid
	$$;
});
my $caches = q{SELECT string_agg(index || ' ' || (elements > 0) || ' ' || codes || ' ' || shared, ', ' ORDER BY index::text)
	FROM gnnvec_scan_cache()};
my $check = q{SELECT coalesce(string_agg(blkno || '/' || offnum || ': ' || problem, '; '), '')
	FROM gnnvec_index_check('t_v')};
# rows through the shared cache, and with every cache off, differ in none
my $same = q{
	SET enable_seqscan = off;
	SET gnnvec.ef_search = 100;
	CREATE TEMP TABLE a AS SELECT * FROM top10();
	SET gnnvec.scan_cache_size = 0;
	CREATE TEMP TABLE b AS SELECT * FROM top10();
	SELECT count(*) || ' ' || count(*) FILTER (WHERE a.ids <> b.ids) FROM a JOIN b USING (qid);
};

is($node->safe_psql('postgres', $caches), '', 'no cache before any scan');
is($node->safe_psql('postgres', $same), '50 0',
	'scans through the shared cache return what scans without a cache return');
is($node->safe_psql('postgres', $caches), 't_v true false true',
	'a new session finds the cache the last one filled, in shared memory');
my $filled = $node->safe_psql('postgres',
	q{SELECT elements FROM gnnvec_scan_cache() WHERE index = 't_v'::regclass});
ok($filled >= 1000, "it holds the elements the scans met ($filled)");
is($node->safe_psql('postgres', $check), '', 'gnnvec_index_check finds it agrees with the pages');

# The cache also keeps the neighbour lists the scans read, and scans walk
# them instead of the pages.  Inserts change lists on the pages in place:
# a row inserted next to each query must be found at once by a new
# session, through the lists the earlier scans kept (stale lists would not
# lead to it), and the lists kept must still be the pages'.
$node->safe_psql('postgres', q{
	INSERT INTO t SELECT 100000 + qid, (SELECT array_agg(x + 0.0001) FROM unnest(q::real[]) x)::vector(16) FROM q;
});
is($node->safe_psql('postgres', q{
	SET enable_seqscan = off;
	SET gnnvec.ef_search = 40;
	SELECT count(*) FROM q
	WHERE 100000 + qid = ANY (array(SELECT id FROM t ORDER BY v <-> q LIMIT 2));
}), '50', 'rows inserted next to each query are found at once through the cached lists');
is($node->safe_psql('postgres', $check), '', 'and the lists the cache keeps are the pages\' after the inserts');
# the cache keeps the heap TID of each row those scans returned; a
# duplicate of each row joins its element (a second heap TID), and both
# rows must come back at once
$node->safe_psql('postgres', q{
	INSERT INTO t SELECT id + 100000, v FROM t WHERE id > 100000;
});
is($node->safe_psql('postgres', q{
	SET enable_seqscan = off;
	SET gnnvec.ef_search = 40;
	SELECT count(*) FROM q
	WHERE array[100000 + qid, 200000 + qid] <@ array(SELECT id FROM t ORDER BY v <-> q LIMIT 3);
}), '50', 'a duplicate inserted since comes back with its row: the heap TIDs kept follow the pages');
is($node->safe_psql('postgres', $check), '', 'and the heap TIDs the cache keeps are the elements\'');

# VACUUM frees elements and bumps the generation; inserts take the freed
# elements over with other vectors.  The old cache is not checked against
# them, and the next scan clears it.
my $gen0 = $node->safe_psql('postgres',
	q{SELECT generation FROM gnnvec_scan_cache() WHERE index = 't_v'::regclass});
$node->safe_psql('postgres', q{
	DELETE FROM t WHERE id % 3 = 0;
	VACUUM t;
	INSERT INTO t SELECT i, (SELECT array_agg(random()::real) FROM generate_series(1, 16) WHERE i > 0)::vector
		FROM generate_series(3001, 3600) i;
});
is($node->safe_psql('postgres', $check), '', 'the cache of the old generation is left unchecked');
is($node->safe_psql('postgres', $same), '50 0', 'after VACUUM and inserts, the same rows as without a cache');
is($node->safe_psql('postgres',
	qq{SELECT (generation - $gen0 + 4294967296) % 4294967296 FROM gnnvec_scan_cache() WHERE index = 't_v'::regclass}),
	'1', 'the cache was cleared for the new generation');
is($node->safe_psql('postgres', $check), '', 'and refilled from the pages as they are now');

# 8 directory entries: a ninth index falls back to the backend's own cache
$node->safe_psql('postgres', join('', map { qq{
	CREATE TABLE s$_ (id int, v vector(4));
	INSERT INTO s$_ SELECT i, ARRAY[sin(i), cos(i), i % 7, $_]::real[] FROM generate_series(1, 300) i;
	CREATE INDEX s${_}_v ON s$_ USING gnnhnsw (v);
} } 1 .. 8));
is($node->safe_psql('postgres', join('', map { qq{
	SET enable_seqscan = off;
	SELECT count(*) FROM (SELECT id FROM s$_ ORDER BY v <-> '[0,1,2,3]' LIMIT 5) x;
} } 1 .. 8) . q{
	SELECT count(*) FILTER (WHERE shared) || ' shared, ' || count(*) FILTER (WHERE NOT shared) || ' own'
	FROM gnnvec_scan_cache();
}), "5\n5\n5\n5\n5\n5\n5\n5\n8 shared, 1 own", 'eight indexes share, the ninth uses its own cache');

# concurrent load: scans, inserts and deletes while VACUUM runs again and
# again (each VACUUM that frees elements starts a new generation)
my $duration = 15;
my ($vacuum) = GnnvecIndex::vacuum_loop($node, 't', $duration);
$node->pgbench(
	"--no-vacuum --client=6 --jobs=2 --time=$duration",
	0,
	[ qr{processed: \d+}, qr{number of failed transactions: 0 } ],
	[qr{^$}],
	'scans, inserts and deletes through the shared cache run without errors',
	{
		'shared_scan@6' => q{
			SET enable_seqscan = off;
			SELECT id FROM t ORDER BY v <-> (SELECT array_agg(random()::real) FROM generate_series(1, 16))::vector LIMIT 10;
		},
		'shared_insert@2' => q{
			\set id random(1, 4000)
			INSERT INTO t SELECT :id, (SELECT array_agg(random()::real) FROM generate_series(1, 16))::vector
				ON CONFLICT (id) DO NOTHING;
		},
		'shared_delete@2' => q{
			\set id random(1, 4000)
			DELETE FROM t WHERE id = :id;
		},
	});
$vacuum->finish;
is($?, 0, 'the VACUUM session ran without errors');

is($node->safe_psql('postgres', $same), '50 0', 'after the load, the same rows as without a cache');
is($node->safe_psql('postgres', $check), '', 'gnnvec_index_check agrees with the cache after the load');
my $recall = $node->safe_psql('postgres', q{
	SET enable_indexscan = off;
	CREATE TEMP TABLE truth AS SELECT qid, id FROM q, LATERAL (SELECT id FROM t ORDER BY v <-> q, id LIMIT 10) s;
	RESET enable_indexscan;
	SET enable_seqscan = off;
	SET gnnvec.ef_search = 40;
	SELECT round(count(*)::numeric / (SELECT count(*) FROM truth), 4) FROM truth JOIN
		(SELECT qid, id FROM q, LATERAL (SELECT id FROM t ORDER BY v <-> q LIMIT 10) s) a USING (qid, id);
});
ok($recall >= 0.95, "recall\@10 at ef_search 40 through the shared cache: $recall >= 0.95");

# a streaming standby has a shared cache of its own; the generation comes
# with the primary's WAL, so a VACUUM there clears the standby's cache too
$node->backup('b');
my $standby = PostgreSQL::Test::Cluster->new('shared_cache_standby');
$standby->init_from_backup($node, 'b', has_streaming => 1);
$standby->start;
my $rows = q{SELECT string_agg(qid || ':' || array_to_string(ids, ','), ';' ORDER BY qid) FROM top10()};
my $cached = qq{SET enable_seqscan = off; SET gnnvec.ef_search = 100; $rows};
my $uncached = qq{SET enable_seqscan = off; SET gnnvec.ef_search = 100; SET gnnvec.scan_cache_size = 0; $rows};
is($standby->safe_psql('postgres', $cached), $standby->safe_psql('postgres', $uncached),
	'standby: scans through its shared cache return what scans without a cache return');
my $sgen = $standby->safe_psql('postgres',
	q{SELECT generation FROM gnnvec_scan_cache() WHERE index = 't_v'::regclass AND shared});
ok($sgen ne '', 'standby: the cache is in its shared memory');
$node->safe_psql('postgres', q{
	DELETE FROM t WHERE id % 5 = 0;
	VACUUM t;
	INSERT INTO t SELECT i, (SELECT array_agg(random()::real) FROM generate_series(1, 16) WHERE i > 0)::vector
		FROM generate_series(5001, 5400) i;
});
$node->wait_for_catchup($standby);
is($standby->safe_psql('postgres', $cached), $standby->safe_psql('postgres', $uncached),
	'standby, after the primary\'s VACUUM and inserts: the same rows as without a cache');
is($standby->safe_psql('postgres',
	qq{SELECT generation <> $sgen FROM gnnvec_scan_cache() WHERE index = 't_v'::regclass AND shared}),
	't', "standby: the cache was cleared for the primary's new generation");
is($standby->safe_psql('postgres', $check), '', 'standby: gnnvec_index_check agrees with its cache');
$standby->stop;

done_testing();
