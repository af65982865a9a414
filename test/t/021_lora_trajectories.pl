# Trajectories in shared memory: a known plan (Hash Join + Sort) recorded in
# one backend is read in another, the ring keeps the newest
# gnnvec.trajectory_capacity records, and the query embedding of a vector
# ORDER BY is kept up to gnnvec.lora_max_dim dimensions.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('lora_traj');
$node->init;
$node->append_conf('postgresql.conf', q{
shared_preload_libraries = 'gnnvec'
gnnvec.lora_max_dim = 8
gnnvec.trajectory_capacity = 8
});
$node->start;
$node->safe_psql('postgres', q{
	CREATE EXTENSION gnnvec;
	CREATE TABLE items (id int PRIMARY KEY, cat int, v vector(3));
	INSERT INTO items SELECT i, i % 4, ARRAY[i % 5, i % 3, 1]::real[]::vector FROM generate_series(1, 100) i;
	CREATE TABLE cats (cat int, label text);
	INSERT INTO cats SELECT c, 'c' || c FROM generate_series(0, 3) c;
	ANALYZE items, cats;
});

my $query = q{SELECT i.id, c.label FROM items i JOIN cats c USING (cat) ORDER BY c.label, i.id LIMIT 5};
my $plan = $node->safe_psql('postgres', qq{
	SET enable_mergejoin = off; SET enable_nestloop = off;
	EXPLAIN (COSTS OFF) $query});
like($plan, qr/Limit.*Sort.*Hash Join.*Seq Scan.*Hash.*Seq Scan/s, 'the plan is Limit, Sort, Hash Join');

# backend 1 records
$node->safe_psql('postgres', qq{
	SET enable_mergejoin = off; SET enable_nestloop = off;
	SET gnnvec.record_trajectories = on;
	$query});

# backend 2 reads
is($node->safe_psql('postgres',
		q{SELECT string_agg(scope || ':' || rows || ':' || loops, ' ' ORDER BY id) FROM gnnvec_trajectories()}),
	'Limit:5:1 Sort:5:1 HashJoin:100:1 SeqScan:100:1 SeqScan:4:1',
	'backend 2 sees the nodes backend 1 executed');
is($node->safe_psql('postgres',
		q{SELECT bool_and(execution_ms > 0 AND baseline_ms > 0) FROM gnnvec_trajectories()}),
	't', 'nodes are timed');
is($node->safe_psql('postgres',
		q{SELECT count_by_operator FROM gnnvec_trajectory_stats()}),
	'{"Sort": 1, "Limit": 1, "SeqScan": 2, "HashJoin": 1}', 'count per operator');

# the baseline is shared: the next Hash Join, in another backend, is
# compared with the first one
$node->safe_psql('postgres', qq{
	SET enable_mergejoin = off; SET enable_nestloop = off;
	SET gnnvec.record_trajectories = on;
	$query});
is($node->safe_psql('postgres', q{
	SELECT b.baseline_ms = a.execution_ms
	FROM gnnvec_trajectories() a, gnnvec_trajectories() b
	WHERE a.id = 3 AND b.id = 8}),
	't', 'the second Hash Join\'s baseline is the first one\'s time');

# capacity 8: ten records so far, the oldest two are gone
is($node->safe_psql('postgres',
		q{SELECT total || ' ' || buffered FROM gnnvec_trajectory_stats()}),
	'10 8', 'ring holds the newest gnnvec.trajectory_capacity records');
is($node->safe_psql('postgres', q{SELECT min(id) || '-' || max(id) FROM gnnvec_trajectories()}),
	'3-10', 'oldest first, newest last');

# query embeddings, and one wider than gnnvec.lora_max_dim
$node->safe_psql('postgres', q{
	SELECT gnnvec_trajectory_reset();
	SET gnnvec.record_trajectories = on;
	SELECT id FROM items ORDER BY v <-> '[1,2,1]' LIMIT 3;
	SELECT 1 FROM (SELECT array_fill(1, ARRAY[9])::vector AS w FROM items LIMIT 1) s
	  ORDER BY w <-> array_fill(0, ARRAY[9])::vector;
});
is($node->safe_psql('postgres',
		q{SELECT string_agg(scope || ':' || coalesce(embedding::text, '-'), ' ' ORDER BY id) FROM gnnvec_trajectories()}),
	'Limit:[1,2,1] Sort:[1,2,1] SeqScan:[1,2,1] Sort:- Limit:- SeqScan:-',
	'embeddings kept, the 9-dimensional one left out');
is($node->safe_psql('postgres', q{SELECT embeddings_dropped FROM gnnvec_trajectory_stats()}),
	'3', 'and counted');

# recording is off by default and needs a superuser to turn on
$node->safe_psql('postgres', q{
	SELECT gnnvec_trajectory_reset();
	SELECT count(*) FROM items;
});
is($node->safe_psql('postgres', q{SELECT total FROM gnnvec_trajectory_stats()}), '0',
	'nothing recorded while off');

$node->stop;
done_testing();
