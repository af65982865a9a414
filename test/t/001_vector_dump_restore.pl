# Vectors survive pg_dump/pg_restore (custom and plain formats), binary COPY
# between clusters and an immediate shutdown: nothing committed is lost.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use File::Spec;

my $node = PostgreSQL::Test::Cluster->new('main');
$node->init;
$node->start;

$node->safe_psql('postgres', q{
	CREATE EXTENSION gnnvec;
	CREATE TABLE items (id int PRIMARY KEY, v vector(16), w vector);
	SELECT setseed(0.5);
	INSERT INTO items
	  SELECT i, (SELECT array_agg((random() - 0.5) * 10 ^ (i % 7 - 3) + 0 * g) FROM generate_series(1, 16) g)::vector,
	         CASE WHEN i % 3 = 0 THEN NULL ELSE array_fill(i::real / 7, ARRAY[1 + i % 40])::vector END
	  FROM generate_series(1, 2000) i;
});
my $checksum_sql = q{SELECT md5(string_agg(id || ':' || v::text || ':' || coalesce(w::text, '-'), ',' ORDER BY id)) FROM items};
my $before = $node->safe_psql('postgres', $checksum_sql);

# custom-format dump restored into a new database
my $dump = $node->basedir . '/items.dump';
command_ok([ 'pg_dump', '-Fc', '-d', $node->connstr('postgres'), '-f', $dump ], 'pg_dump -Fc');
$node->safe_psql('postgres', 'CREATE DATABASE restored');
command_ok([ 'pg_restore', '-d', $node->connstr('restored'), $dump ], 'pg_restore');
is($node->safe_psql('restored', $checksum_sql), $before, 'custom-format dump restores identical vectors');

# plain SQL dump (COPY text) into another database
my $plain = $node->basedir . '/items.sql';
command_ok([ 'pg_dump', '-d', $node->connstr('postgres'), '-f', $plain ], 'pg_dump plain');
$node->safe_psql('postgres', 'CREATE DATABASE restored_plain');
command_ok([ 'psql', '-X', '-q', '-v', 'ON_ERROR_STOP=1', '-d', $node->connstr('restored_plain'), '-f', $plain ],
	'plain dump replays');
is($node->safe_psql('restored_plain', $checksum_sql), $before, 'plain dump restores identical vectors');

# binary COPY out of one cluster and into a second one
my $other = PostgreSQL::Test::Cluster->new('other');
$other->init;
$other->start;
my $copyfile = File::Spec->rel2abs($node->basedir . '/items.bin');
$node->safe_psql('postgres', "COPY items TO '$copyfile' (FORMAT binary)");
$other->safe_psql('postgres', qq{
	CREATE EXTENSION gnnvec;
	CREATE TABLE items (id int PRIMARY KEY, v vector(16), w vector);
	COPY items FROM '$copyfile' (FORMAT binary);
});
is($other->safe_psql('postgres', $checksum_sql), $before, 'binary COPY between clusters is lossless');

# committed rows survive an immediate shutdown (crash recovery replays WAL)
$node->safe_psql('postgres', q{INSERT INTO items VALUES (5000, array_fill(0.1::real, ARRAY[16])::vector, '[1,2,3]')});
$node->stop('immediate');
$node->start;
is($node->safe_psql('postgres', q{SELECT v::text || ' ' || w::text FROM items WHERE id = 5000}),
	'[' . join(',', ('0.1') x 16) . '] [1,2,3]', 'committed row present after crash recovery');
is($node->safe_psql('postgres', 'SELECT count(*) FROM items'), '2001', 'no row lost');

$other->stop;
$node->stop;
done_testing();
