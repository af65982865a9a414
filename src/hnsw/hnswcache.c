/*
 * hnswcache.c
 *		Vectors by element TID for index scans (see hnswscan.c): a scan
 *		that finds an element's vector here computes its distance without
 *		a trip through the buffer manager.
 *
 * An open-addressing map from the key to a slot (key and slot side by side:
 * one cache line per probe), and the slots in chunks of HNSW_VCACHE_CHUNK,
 * so that growing never moves a vector; a slot is the caller's word then
 * the vector, read together.  Every byte counts against the budget
 * (*used <= limit), the map included.  PostgreSQL-free; unit-tested in test/unit/test_hnswgraph.c.
 */
#define HNSW_PURE
#include "hnsw/hnsw.h"

#include <string.h>

void
hnsw_vcache_init(HnswVecCache *c, int dim, size_t *used, size_t limit,
				 const HnswAllocator *a)
{
	memset(c, 0, sizeof(HnswVecCache));
	c->dim = dim;
	c->used = used;
	c->limit = limit;
	c->a = a;
}

void
hnsw_vcache_clear(HnswVecCache *c)
{
	const HnswAllocator *a = c->a;

	for (int i = 0; i < c->nchunks; i++)
		a->free(a->ctx, c->chunks[i]);
	if (c->chunks)
		a->free(a->ctx, c->chunks);
	if (c->map)
		a->free(a->ctx, c->map);
	*c->used -= c->bytes;
	hnsw_vcache_init(c, c->dim, c->used, c->limit, a);
}

/* Take bytes from the budget, or refuse. */
static bool
take(HnswVecCache *c, size_t bytes)
{
	if (*c->used + bytes > c->limit)
		return false;
	*c->used += bytes;
	c->bytes += bytes;
	return true;
}

static void
give_back(HnswVecCache *c, size_t bytes)
{
	*c->used -= bytes;
	c->bytes -= bytes;
}

/* A map of size slots (a power of two) holding what the old one held. */
static bool
map_resize(HnswVecCache *c, uint64_t size)
{
	const HnswAllocator *a = c->a;
	HnswVecCacheEntry *map;
	uint64_t	oldsize = c->map ? c->mask + 1 : 0;

	if (!take(c, size * sizeof(HnswVecCacheEntry)))
		return false;
	map = a->alloc(a->ctx, sizeof(HnswVecCacheEntry) * size);
	memset(map, 0, sizeof(HnswVecCacheEntry) * size);
	for (uint64_t i = 0; i < oldsize; i++)
	{
		uint64_t	j;

		if (c->map[i].key == 0)
			continue;
		j = hnsw_key_hash(c->map[i].key) & (size - 1);
		while (map[j].key != 0)
			j = (j + 1) & (size - 1);
		map[j] = c->map[i];
	}
	if (c->map)
	{
		a->free(a->ctx, c->map);
		give_back(c, oldsize * sizeof(HnswVecCacheEntry));
	}
	c->map = map;
	c->mask = size - 1;
	return true;
}

/* Bytes of one slot: the caller's word, then the vector. */
static inline size_t
slot_bytes(const HnswVecCache *c)
{
	return sizeof(uint64_t) + sizeof(float) * c->dim;
}

static inline char *
slot_at(const HnswVecCache *c, int32_t slot)
{
	return c->chunks[slot / HNSW_VCACHE_CHUNK] +
		(size_t) (slot % HNSW_VCACHE_CHUNK) * slot_bytes(c);
}

/* One more chunk of slots. */
static bool
add_chunk(HnswVecCache *c)
{
	const HnswAllocator *a = c->a;

	if (c->nchunks == c->capchunks)
	{
		int			cap = c->capchunks ? c->capchunks * 2 : 16;
		char	  **chunks = a->alloc(a->ctx, sizeof(char *) * cap);

		if (c->nchunks > 0)
		{
			memcpy(chunks, c->chunks, sizeof(char *) * c->nchunks);
			a->free(a->ctx, c->chunks);
		}
		c->chunks = chunks;
		c->capchunks = cap;
	}
	if (!take(c, HNSW_VCACHE_CHUNK * slot_bytes(c)))
		return false;
	c->chunks[c->nchunks++] = a->alloc(a->ctx, HNSW_VCACHE_CHUNK * slot_bytes(c));
	return true;
}

void
hnsw_vcache_prefetch(const HnswVecCache *c, uint64_t key)
{
	if (c->map != NULL)
		hnsw_prefetch(&c->map[hnsw_key_hash(key) & c->mask]);
}

const float *
hnsw_vcache_get(const HnswVecCache *c, uint64_t key)
{
	uint64_t	j;

	if (c->map == NULL)
		return NULL;
	j = hnsw_key_hash(key) & c->mask;
	while (c->map[j].key != 0)
	{
		if (c->map[j].key == key)
			return (const float *) (slot_at(c, c->map[j].slot) + sizeof(uint64_t));
		j = (j + 1) & c->mask;
	}
	return NULL;
}

bool
hnsw_vcache_put(HnswVecCache *c, uint64_t key, const float *vec, uint64_t aux)
{
	uint64_t	j;
	int32_t		slot = c->n;
	char	   *p;

	if (hnsw_vcache_get(c, key) != NULL)
		return true;
	if ((c->map == NULL || (uint64_t) (c->n + 1) * 2 > c->mask + 1) &&
		!map_resize(c, c->map ? (c->mask + 1) * 2 : 1024))
		return false;
	if (slot == c->nchunks * HNSW_VCACHE_CHUNK && !add_chunk(c))
		return false;
	p = slot_at(c, slot);
	memcpy(p, &aux, sizeof(uint64_t));
	memcpy(p + sizeof(uint64_t), vec, sizeof(float) * c->dim);
	j = hnsw_key_hash(key) & c->mask;
	while (c->map[j].key != 0)
		j = (j + 1) & c->mask;
	c->map[j].key = key;
	c->map[j].slot = slot;
	c->n++;
	return true;
}
