# gnnhnsw under concurrent inserts, deletes, scans and VACUUM (pgbench with
# several clients, VACUUM looping beside it): no errors, the index passes
# gnnvec_index_check, recall holds, and the index size stays bounded while
# rows are deleted and re-inserted.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;

my $node = PostgreSQL::Test::Cluster->new('conc');
$node->init;
$node->append_conf('postgresql.conf', "autovacuum = off\nmax_connections = 30\n");
$node->start;
$node->safe_psql('postgres', q{
	CREATE EXTENSION gnnvec;
	CREATE TABLE items (id int PRIMARY KEY, v vector(8));
	SELECT setseed(0.3);
	INSERT INTO items SELECT i, (SELECT array_agg(random()::real) FROM generate_series(1, 8) WHERE i > 0)::vector
		FROM generate_series(1, 4000) i;
	CREATE INDEX items_v ON items USING gnnhnsw (v) WITH (m = 8, ef_construction = 32);
});
my $pages0 = $node->safe_psql('postgres', q{SELECT pages FROM gnnvec_index_info('items_v')});

# VACUUM in a loop beside the workload
my $vacfile = $node->basedir . '/vac.sql';
open(my $fh, '>', $vacfile) or die;
print $fh "VACUUM items;\nSELECT pg_sleep(0.05);\n" for 1 .. 60;
close($fh);
my ($vout, $verr) = ('', '');
my $vac = IPC::Run::start([ 'psql', '-X', '-q', '-v', 'ON_ERROR_STOP=1', '-d', $node->connstr('postgres'), '-f', $vacfile ],
	'>', \$vout, '2>', \$verr);

$node->pgbench(
	'--no-vacuum --client=6 --transactions=250',
	0,
	[qr{processed: 1500/1500}],
	[qr{^$}],
	'concurrent inserts, deletes and scans',
	{
		'hnsw_insert' => q{
			\set id random(4001, 6000)
			INSERT INTO items SELECT :id, (SELECT array_agg(random()::real) FROM generate_series(1, 8))::vector
				ON CONFLICT (id) DO NOTHING;
		},
		'hnsw_delete' => q{
			\set id random(1, 6000)
			DELETE FROM items WHERE id = :id;
		},
		'hnsw_reinsert' => q{
			\set id random(1, 4000)
			INSERT INTO items SELECT :id, (SELECT array_agg(random()::real) FROM generate_series(1, 8))::vector
				ON CONFLICT (id) DO NOTHING;
		},
		'hnsw_scan' => q{
			SET enable_seqscan = off;
			SELECT id FROM items ORDER BY v <-> (SELECT array_agg(random()::real) FROM generate_series(1, 8))::vector LIMIT 10;
		},
	});
$vac->finish;
is($?, 0, 'the VACUUM loop ran without errors');
is($verr, '', 'VACUUM printed nothing on stderr');

$node->safe_psql('postgres', 'VACUUM items');
is($node->safe_psql('postgres', q{SELECT count(*) FROM gnnvec_index_check('items_v')}),
	'0', 'gnnvec_index_check reports nothing');
is($node->safe_psql('postgres', q{SELECT heap_tids FROM gnnvec_index_info('items_v')}),
	$node->safe_psql('postgres', 'SELECT count(*) FROM items'),
	'one heap TID per live row after VACUUM');

my $recall_sql = q{
	CREATE TEMP TABLE q AS SELECT id AS qid, v AS q FROM items WHERE id % 50 = 1;
	SET enable_indexscan = off;
	CREATE TEMP TABLE truth AS SELECT qid, id FROM q, LATERAL (SELECT id FROM items ORDER BY v <-> q, id LIMIT 10) s;
	SET enable_indexscan = on;
	SET enable_seqscan = off;
	CREATE TEMP TABLE approx AS SELECT qid, id FROM q, LATERAL (SELECT id FROM items ORDER BY v <-> q LIMIT 10) s;
	SELECT count(*)::float8 / (SELECT count(*) FROM truth) FROM truth JOIN approx USING (qid, id);
};
my $recall = $node->safe_psql('postgres', $recall_sql);
ok($recall >= 0.9, "recall\@10 $recall >= 0.9 after the concurrent workload");

# several rounds of delete-half / vacuum / re-insert: the size stays bounded
for my $round (1 .. 3)
{
	$node->safe_psql('postgres', qq{
		CREATE TEMP TABLE keep AS SELECT * FROM items WHERE id % 2 = $round % 2;
		DELETE FROM items WHERE id % 2 = $round % 2;
		VACUUM items;
		INSERT INTO items SELECT * FROM keep;
	});
}
my $pages = $node->safe_psql('postgres', q{SELECT pages FROM gnnvec_index_info('items_v')});
ok($pages <= $pages0 * 1.8, "index size bounded: $pages pages (built with $pages0, then up to 2000 more rows)");
is($node->safe_psql('postgres', q{SELECT count(*) FROM gnnvec_index_check('items_v')}),
	'0', 'gnnvec_index_check reports nothing after delete/re-insert rounds');

done_testing();
