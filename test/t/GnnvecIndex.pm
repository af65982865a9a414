# Checks of a gnnhnsw index shared by the TAP tests.
#
#   use lib $FindBin::RealBin;
#   use GnnvecIndex;
#   GnnvecIndex::self_lookup_misses($node, 'items', 100);
package GnnvecIndex;

use strict;
use warnings;

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
