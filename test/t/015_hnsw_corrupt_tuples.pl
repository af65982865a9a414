# gnnhnsw on damaged tuples.  Single tuples of a stopped cluster's index
# file are damaged on disk (an element, its neighbour tuple, the data tuples
# that carry the rest of its 5000-dimension vector); then a scan, an insert
# and VACUUM each fail with ERRCODE_INDEX_CORRUPTED (XX002) naming the index
# and the block, gnnvec_index_check reports the damage, nothing hangs and
# the server never crashes.  Then pages a crashed extender left empty
# (zeroes appended to the file) are taken over by inserts: the index does
# not grow.  Page layouts are those of src/hnsw/hnsw.h.
use strict;
use warnings;
use Fcntl qw(O_RDWR SEEK_SET);
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $BLCKSZ = 8192;
my $DIMS = 5000;				# inline floats, then two data tuples
my $TIMEOUT = 120;

my $node = PostgreSQL::Test::Cluster->new('corrupt');
$node->init;
$node->append_conf('postgresql.conf', "fsync = off\nautovacuum = off\n");
$node->start;
$node->safe_psql('postgres', qq{
	CREATE EXTENSION gnnvec;
	CREATE TABLE t (id int, v vector($DIMS));
	INSERT INTO t
		SELECT i, (SELECT array_agg(random()::real) FROM generate_series(1, $DIMS) WHERE i > 0)::vector
		FROM generate_series(1, 150) i;
	CREATE INDEX t_v ON t USING gnnhnsw (v) WITH (m = 4);
	CREATE TABLE s (id int, v vector(16));
	INSERT INTO s
		SELECT i, (SELECT array_agg(random()::real) FROM generate_series(1, 16) WHERE i > 0)::vector
		FROM generate_series(1, 500) i;
	CREATE INDEX s_v ON s USING gnnhnsw (v);
});
my $data_dir = $node->data_dir;
my $tfile = "$data_dir/" . $node->safe_psql('postgres', q{SELECT pg_relation_filepath('t_v')});
my $sfile = "$data_dir/" . $node->safe_psql('postgres', q{SELECT pg_relation_filepath('s_v')});

# --- reading and writing the file ------------------------------------------

sub slurp
{
	my ($file) = @_;
	open(my $fh, '<:raw', $file) or die "open $file: $!";
	local $/;
	my $bytes = <$fh>;
	close($fh);
	return $bytes;
}

sub overwrite
{
	my ($file, $bytes) = @_;
	open(my $fh, '>:raw', $file) or die "open $file: $!";
	print $fh $bytes;
	close($fh);
}

# write $bytes at byte $pos of the file
sub poke
{
	my ($file, $pos, $bytes) = @_;
	sysopen(my $fh, $file, O_RDWR) or die "open $file: $!";
	sysseek($fh, $pos, SEEK_SET) or die "seek $file: $!";
	syswrite($fh, $bytes) == length($bytes) or die "write $file: $!";
	close($fh);
}

sub tid { my ($hi, $lo, $off) = unpack('vvv', $_[0]); return [ ($hi << 16) | $lo, $off ]; }
sub pack_tid { my ($blk, $off) = @_; return pack('vvv', $blk >> 16, $blk & 0xffff, $off); }

# Every tuple of the file: block, offset, file position, length, kind and
# the fields the test needs (HnswElementTupleData, HnswDataTupleData,
# HnswNeighborTupleData).
sub parse_index
{
	my ($bytes) = @_;
	my %t;
	for my $blk (1 .. length($bytes) / $BLCKSZ - 1)
	{
		my $page = substr($bytes, $blk * $BLCKSZ, $BLCKSZ);
		my $lower = unpack('v', substr($page, 12, 2));
		for (my $off = 1; 24 + 4 * $off <= $lower; $off++)
		{
			my $lp = unpack('V', substr($page, 24 + 4 * ($off - 1), 4));
			my ($lpoff, $flags, $len) = ($lp & 0x7fff, ($lp >> 15) & 3, $lp >> 17);
			next unless $flags == 1;
			my $item = substr($page, $lpoff, $len);
			my %tup = (blk => $blk, off => $off, pos => $blk * $BLCKSZ + $lpoff,
				len => $len, kind => unpack('C', $item));
			if ($tup{kind} == 1)
			{
				$tup{level} = unpack('C', substr($item, 1, 1));
				$tup{heaptid} = tid(substr($item, 4, 6));
				$tup{neighbortid} = tid(substr($item, 64, 6));
				$tup{datatid} = tid(substr($item, 70, 6));
			}
			elsif ($tup{kind} == 3)
			{
				$tup{next} = tid(substr($item, 4, 6));
			}
			$t{"$blk,$off"} = \%tup;
		}
	}
	return \%t;
}

sub key { my ($tid) = @_; return "$tid->[0],$tid->[1]"; }

# --- the damaged structures ---------------------------------------------------

# a row to delete, so that VACUUM has work and walks the graph
my $deleted = $node->safe_psql('postgres', 'DELETE FROM t WHERE id = 1 RETURNING ctid');
$node->stop;
my $orig = slurp($tfile);
my $tuples = parse_index($orig);
my ($entry_blk, $entry_off) = unpack('VV', substr($orig, 24 + 20, 8));

# an element of level 0 in the middle of the file, not the entry point
my @elems = sort { $a->{blk} <=> $b->{blk} }
  grep {
	$_->{kind} == 1 && $_->{level} == 0 && $_->{blk} != $entry_blk
	  && "($_->{heaptid}[0],$_->{heaptid}[1])" ne $deleted
  } values %$tuples;
my $e = $elems[ int(@elems / 2) ];
my $n = $tuples->{ key($e->{neighbortid}) };
my $d1 = $tuples->{ key($e->{datatid}) };
my $d2 = $tuples->{ key($d1->{next}) };
ok($n && $n->{kind} == 2 && $d1 && $d2 && $d2->{next}[1] == 0,
	"element ($e->{blk},$e->{off}) has a neighbour tuple and a chain of two data tuples");
my $ctid = "($e->{heaptid}[0],$e->{heaptid}[1])";
my $nblocks = length($orig) / $BLCKSZ;

# name => [ tuple damaged, byte offset in it, bytes, block named by the error ]
my @cases = (
	[ 'element inline count', $e, 78, pack('v', 100), $e ],
	[ 'element dimensions', $e, 76, pack('v', 4999), $e ],
	[ 'element level', $e, 1, pack('C', 200), $e ],
	[ 'element heap TID count', $e, 3, pack('C', 200), $e ],
	[ 'element neighbour TID beyond the end', $e, 64, pack_tid($nblocks + 10, 1), $e ],
	[ 'neighbour tuple slot count', $n, 2, pack('v', 4000), $n ],
	[ 'neighbour tuple level', $n, 1, pack('C', 3), $n ],
	[ 'neighbour TID beyond the end', $n, 4, pack_tid($nblocks + 10, 1), $n ],
	[ 'neighbour TID into the metapage', $n, 4, pack_tid(0, 1), $n ],
	[ 'data tuple count 0', $d1, 2, pack('v', 0), $d1 ],
	[ 'data tuple pointing at itself', $d1, 4, pack_tid($d1->{blk}, $d1->{off}), $d1 ],
	[ 'data tuple pointing at a garbage offset', $d1, 4, pack_tid($d1->{blk}, 1500), $d1 ],
	[ 'last data tuple pointing at the first', $d2, 4, pack_tid($d1->{blk}, $d1->{off}), $d2 ],
);

# Run $sql with a time limit; returns (timed out, stderr).
sub probe
{
	my ($sql) = @_;
	my $timed_out = 0;
	my ($ret, $out, $err) = $node->psql('postgres', "\\set VERBOSITY verbose\n$sql",
		timeout => $TIMEOUT, timed_out => \$timed_out);
	return ($timed_out, $err // '');
}

my $query_vec = "(SELECT v FROM t WHERE ctid = '$ctid')";
my %probes = (
	scan => qq{SET enable_seqscan = off; SET gnnvec.ef_search = 400;
		SELECT id FROM t ORDER BY v <-> $query_vec LIMIT 3;},
	insert => qq{BEGIN; INSERT INTO t SELECT 0, v FROM t WHERE ctid = '$ctid'; ROLLBACK;},
	vacuum => q{VACUUM t;},
);

for my $case (@cases)
{
	my ($name, $tup, $at, $bytes, $named) = @$case;

	overwrite($tfile, $orig);
	poke($tfile, $tup->{pos} + $at, $bytes);
	my $log_start = -s $node->logfile;
	$node->start;
	for my $what (qw(scan insert vacuum))
	{
		my ($timed_out, $err) = probe($probes{$what});
		ok(!$timed_out, "$name: $what does not hang");
		like($err, qr/ERROR:  XX002: index "t_v" has a damaged tuple at block \d+, offset \d+/,
			"$name: $what fails with index_corrupted");
		like($err, qr/HINT:  REINDEX the index\./, "$name: $what hints at REINDEX")
		  if $what eq 'scan';
		like($err, qr/at block $named->{blk}, offset $named->{off}\b/,
			"$name: $what names the damaged tuple ($named->{blk},$named->{off})")
		  if $what eq 'scan';
	}
	my ($timed_out, $err) = probe(q{SELECT count(*) FROM gnnvec_index_check('t_v')});
	ok(!$timed_out && $err eq '', "$name: gnnvec_index_check runs ($err)");
	my $report = $node->safe_psql('postgres',
		q{SELECT string_agg(format('(%s,%s) %s', blkno, offnum, problem), '; ') FROM gnnvec_index_check('t_v')});
	isnt($report, '', "$name: gnnvec_index_check reports: $report");
	is($node->safe_psql('postgres', 'SELECT 1'), '1', "$name: the server is up");
	$node->stop;
	unlike(slurp_log($log_start), qr/terminated by signal|TRAP:/, "$name: no backend crashed");
}

sub slurp_log
{
	my ($from) = @_;
	return substr(slurp($node->logfile), $from);
}

# --- the undamaged index passes the same probes --------------------------

overwrite($tfile, $orig);
$node->start;
for my $what (qw(scan insert))
{
	my ($timed_out, $err) = probe($probes{$what});
	ok(!$timed_out && $err eq '', "undamaged: $what succeeds ($err)");
}
is($node->safe_psql('postgres', q{SELECT count(*) FROM gnnvec_index_check('t_v')}), '0',
	'undamaged: gnnvec_index_check reports nothing');

# --- pages a crashed extender left empty are reused -----------------------

# zero pages after the last one, as a backend that extended the relation
# and crashed before it initialised the pages leaves them
sub grow_with_zero_pages
{
	my ($index, $file, $pages) = @_;
	my $size = $node->safe_psql('postgres', "SELECT pg_relation_size('$index')");
	$node->stop;
	poke($file, $size, "\0" x ($pages * $BLCKSZ));
	$node->start;
	return $size + $pages * $BLCKSZ;
}

# split vectors (place_tuple): one row takes a page for its element, one
# for its first data tuple, one for the rest
my $tsize = grow_with_zero_pages('t_v', $tfile, 3);
$node->safe_psql('postgres', qq{INSERT INTO t SELECT 1000, v + v FROM t WHERE ctid = '$ctid'});
is($node->safe_psql('postgres', q{SELECT pg_relation_size('t_v')}), $tsize,
	'split vectors: an insert fills the empty pages; the index does not grow');

# inline vectors (the insert walk): more rows than the last page takes
my $ssize = grow_with_zero_pages('s_v', $sfile, 3);
$node->safe_psql('postgres', q{
	INSERT INTO s
		SELECT 1000 + i, (SELECT array_agg(random()::real) FROM generate_series(1, 16) WHERE i > 0)::vector
		FROM generate_series(1, 50) i;
});
is($node->safe_psql('postgres', q{SELECT pg_relation_size('s_v')}), $ssize,
	'inline vectors: inserts fill the empty pages; the index does not grow');

for my $index (qw(t_v s_v))
{
	is($node->safe_psql('postgres', qq{SELECT count(*) FROM gnnvec_index_check('$index')}), '0',
		"$index: gnnvec_index_check reports nothing after the pages were taken over");
}
is($node->safe_psql('postgres', q{
	SET enable_seqscan = off;
	SELECT count(*) FROM s WHERE id > 1000 AND
		(SELECT s2.id FROM s s2 ORDER BY s2.v <-> s.v LIMIT 1) = s.id;
}), '50', 'the rows on the taken-over pages are found through the index');

done_testing();
