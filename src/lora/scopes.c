/*
 * scopes.c
 *		The 17 operator scopes and 7 categories of the seed
 *		(seeds/microlora-scoped-adaptation.txt): names, numbers, parsing.
 */
#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <strings.h>

#include "lora/lora.h"

typedef struct ScopeInfo
{
	const char *name;
	LoraCategory category;
	const char *plan_nodes;
} ScopeInfo;

/* Indexed by LoraScope; the names and order are the seed's. */
static const ScopeInfo scopes[LORA_NUM_SCOPES] = {
	{"SeqScan", LORA_CAT_SCAN, "Seq Scan"},
	{"IndexScan", LORA_CAT_SCAN,
	"Index Scan, Index Only Scan (other than gnnhnsw and ivfflat), Bitmap Heap Scan"},
	{"HnswScan", LORA_CAT_SCAN, "Index Scan, Index Only Scan on a gnnhnsw index"},
	{"IvfFlatScan", LORA_CAT_SCAN, "Index Scan, Index Only Scan on an ivfflat index"},
	{"NestedLoopJoin", LORA_CAT_JOIN, "Nested Loop"},
	{"HashJoin", LORA_CAT_JOIN, "Hash Join"},
	{"MergeJoin", LORA_CAT_JOIN, "Merge Join"},
	{"Aggregate", LORA_CAT_AGGREGATION, "Aggregate (plain, no grouping)"},
	{"GroupBy", LORA_CAT_AGGREGATION,
	"Aggregate (sorted, hashed or mixed grouping), Group"},
	{"Filter", LORA_CAT_TRANSFORM, NULL},
	{"Project", LORA_CAT_TRANSFORM, "ProjectSet"},
	{"Sort", LORA_CAT_ORDER, "Sort, Incremental Sort"},
	{"Limit", LORA_CAT_ORDER, "Limit"},
	{"VectorDistance", LORA_CAT_VECTOR, NULL},
	{"Rerank", LORA_CAT_VECTOR, NULL},
	{"Materialize", LORA_CAT_UTILITY, "Materialize"},
	{"Result", LORA_CAT_UTILITY, "Result"},
};

static const char *const category_names[LORA_NUM_CATEGORIES] = {
	"Scan", "Join", "Aggregation", "Transform", "Order", "Vector", "Utility"
};

const char *
lora_scope_name(int scope)
{
	return scopes[scope].name;
}

LoraCategory
lora_scope_category(int scope)
{
	return scopes[scope].category;
}

const char *
lora_category_name(int category)
{
	return category_names[category];
}

const char *
lora_scope_plan_nodes(int scope)
{
	return scopes[scope].plan_nodes;
}

/*
 * Decimal digits only (an optional sign makes "-1" out of range rather than
 * unknown): anything else, spaces included, is not a number.
 */
static int
parse_scope_number(const char *text)
{
	const char *p = text;
	long		value;
	char	   *end;

	if (*p == '-' || *p == '+')
		p++;
	if (!isdigit((unsigned char) *p))
		return LORA_SCOPE_UNKNOWN;
	errno = 0;
	value = strtol(text, &end, 10);
	if (*end != '\0')
		return LORA_SCOPE_UNKNOWN;
	if (errno != 0 || value < 0 || value >= LORA_NUM_SCOPES)
		return LORA_SCOPE_OUT_OF_RANGE;
	return (int) value;
}

int
lora_scope_parse(const char *text)
{
	for (int scope = 0; scope < LORA_NUM_SCOPES; scope++)
	{
		if (strcasecmp(text, scopes[scope].name) == 0)
			return scope;
	}
	return parse_scope_number(text);
}
