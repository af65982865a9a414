# gnnhnsw under a longer concurrent load: for a fixed time, sessions insert
# (often re-using the ids, and so the index space, of deleted rows), delete
# and scan while VACUUM runs again and again beside them.  Afterwards no
# session has failed, the index passes gnnvec_index_check, holds one heap
# TID per row, every row finds itself through it, and recall@10 over the
# live rows holds (measured: 0.998 at ef_search 10, as for a fresh build;
# the floor is 0.95).
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib $FindBin::RealBin;
use GnnvecIndex;

# seconds of load
my $duration = 45;

my $node = PostgreSQL::Test::Cluster->new('stress');
$node->init;
$node->append_conf('postgresql.conf', "autovacuum = off\nmax_connections = 30\n");
$node->start;
$node->safe_psql('postgres', q{
	CREATE EXTENSION gnnvec;
	CREATE TABLE items (id int PRIMARY KEY, v vector(8));
	SELECT setseed(0.7);
	INSERT INTO items SELECT i, (SELECT array_agg(random()::real) FROM generate_series(1, 8) WHERE i > 0)::vector
		FROM generate_series(1, 5000) i;
	CREATE INDEX items_v ON items USING gnnhnsw (v) WITH (m = 16, ef_construction = 64);
});

# one session runs VACUUM back to back for as long as the load lasts
my ($vacuum, $vout) = GnnvecIndex::vacuum_loop($node, 'items', $duration);

$node->pgbench(
	"--no-vacuum --client=6 --jobs=2 --time=$duration",
	0,
	[ qr{processed: \d+}, qr{number of failed transactions: 0 } ],
	[qr{^$}],
	'inserts, deletes and scans run without errors',
	{
		'stress_insert@4' => q{
			\set id random(1, 8000)
			INSERT INTO items SELECT :id, (SELECT array_agg(random()::real) FROM generate_series(1, 8))::vector
				ON CONFLICT (id) DO NOTHING;
		},
		'stress_delete@3' => q{
			\set id random(1, 8000)
			DELETE FROM items WHERE id = :id;
		},
		'stress_scan@3' => q{
			SET enable_seqscan = off;
			SELECT id FROM items ORDER BY v <-> (SELECT array_agg(random()::real) FROM generate_series(1, 8))::vector LIMIT 10;
		},
	});
$vacuum->finish;
is($?, 0, 'the VACUUM session ran without errors');
like($$vout, qr/processed: [1-9]/, 'VACUUM ran during the load');
note("VACUUM session: " . ($$vout =~ /(number of transactions actually processed: \d+)/)[0]);

$node->safe_psql('postgres', 'VACUUM items');
is($node->safe_psql('postgres', q{
	SELECT string_agg(blkno || '/' || offnum || ': ' || problem, '; ') FROM gnnvec_index_check('items_v')}),
	'', 'gnnvec_index_check reports nothing');
is($node->safe_psql('postgres', q{SELECT heap_tids FROM gnnvec_index_info('items_v')}),
	$node->safe_psql('postgres', 'SELECT count(*) FROM items'),
	'one heap TID per live row');

is(GnnvecIndex::self_lookup_misses($node, 'items', 100), '0', 'every live row finds itself through the index');

# recall@10 of index scans against exact results, queries of every 20th row,
# with a small search list so that a damaged graph shows; then the same for
# a freshly built index over the same rows, for comparison
$node->safe_psql('postgres', q{
	CREATE TABLE q AS SELECT id AS qid, v AS q FROM items WHERE id % 20 = 1;
	SET enable_indexscan = off;
	CREATE TABLE truth AS SELECT qid, id FROM q, LATERAL (SELECT id FROM items ORDER BY v <-> q, id LIMIT 10) s;
});
my $recall_sql = q{
	SET enable_seqscan = off;
	SET gnnvec.ef_search = 10;
	SELECT round(count(*)::numeric / (SELECT count(*) FROM truth), 4) FROM truth JOIN
		(SELECT qid, id FROM q, LATERAL (SELECT id FROM items ORDER BY v <-> q LIMIT 10) s) a USING (qid, id);
};
my $recall = $node->safe_psql('postgres', $recall_sql);
$node->safe_psql('postgres', q{
	DROP INDEX items_v;
	CREATE INDEX items_v ON items USING gnnhnsw (v) WITH (m = 16, ef_construction = 64);
});
my $fresh = $node->safe_psql('postgres', $recall_sql);
ok($recall >= 0.95, "recall\@10 at ef_search 10: $recall after the load (fresh build: $fresh) >= 0.95");

done_testing();
