# Checks of a gnnhnsw index shared by the TAP tests.
#
#   use lib $FindBin::RealBin;
#   use GnnvecIndex;
#   GnnvecIndex::self_lookup_misses($node, 'items', 100);
package GnnvecIndex;

use strict;
use warnings;
use IPC::Run;

# Start a session that runs VACUUM TABLE back to back for DURATION seconds
# (pgbench, one client) beside a load; returns its IPC::Run handle, to
# finish() after the load, and a reference to its output.
sub vacuum_loop
{
	my ($node, $table, $duration) = @_;
	my $file = $node->basedir . "/vacuum_$table.sql";
	my ($out, $err) = ('', '');

	open(my $fh, '>', $file) or die "$file: $!";
	print $fh "VACUUM $table;\n";
	close($fh);
	my $handle = IPC::Run::start(
		[ 'pgbench', '--no-vacuum', '--client=1', "--time=$duration", '--file', $file,
		  $node->connstr('postgres') ],
		'>', \$out, '2>', \$err);
	return ($handle, \$out);
}

# How many rows of TABLE (columns v) do not find a row at distance 0 (their
# own, or a duplicate) as the nearest through the index at the given
# gnnvec.ef_search.
sub self_lookup_misses
{
	my ($node, $table, $ef) = @_;

	return $node->safe_psql('postgres', qq{
		SET enable_seqscan = off;
		SET gnnvec.ef_search = $ef;
		SELECT count(*) FROM $table t,
			LATERAL (SELECT i2.v <-> t.v AS d FROM $table i2 ORDER BY i2.v <-> t.v LIMIT 1) s
		WHERE s.d IS DISTINCT FROM 0;
	});
}

1;
