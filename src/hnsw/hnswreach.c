/*
 * hnswreach.c
 *		A breadth-first walk over the elements of an index in bounded
 *		memory, for VACUUM's reachability pass (hnswvacuum.c).
 *
 * An element is a line-pointer slot (block, offset).  The walk keeps two
 * bits per slot the pages can hold (reached; reached but waiting to be
 * expanded) and a FIFO of reached slots to expand whose length the caller
 * bounds.  A slot reached while the FIFO is full is only flagged as
 * waiting; the flagged ones are queued when it drains, so any queue length
 * of at least one walks the whole component.  Slots past the bitmap (blocks
 * added after the walk started, offsets beyond slots_per_block) count as
 * reached: the caller decides what that means.
 *
 * PostgreSQL-free; unit-tested in test/unit/test_hnswgraph.c.
 */
#define HNSW_PURE
#include "hnsw/hnsw.h"

#include <string.h>

#define REACHED_BIT		0
#define WAITING_BIT		1

size_t
hnsw_reach_bitmap_bytes(uint32_t nblocks, int slots_per_block)
{
	return ((size_t) nblocks * slots_per_block * 2 + 7) / 8;
}

void
hnsw_reach_init(HnswReachWalk *w, uint32_t nblocks, int slots_per_block,
				int queue_cap, const HnswAllocator *a)
{
	size_t		bytes = hnsw_reach_bitmap_bytes(nblocks, slots_per_block);

	w->nblocks = nblocks;
	w->slots_per_block = slots_per_block;
	w->bits = a->alloc(a->ctx, bytes);
	memset(w->bits, 0, bytes);
	w->qcap = queue_cap > 0 ? queue_cap : 1;
	w->queue = a->alloc(a->ctx, sizeof(int64_t) * w->qcap);
	w->qhead = 0;
	w->qlen = 0;
	w->waiting = 0;
	w->a = a;
}

void
hnsw_reach_free(HnswReachWalk *w)
{
	w->a->free(w->a->ctx, w->bits);
	w->a->free(w->a->ctx, w->queue);
}

/* The slot's number, or -1 when it lies past the bitmap. */
static inline int64_t
slot_of(const HnswReachWalk *w, uint32_t blk, uint16_t off)
{
	if (blk >= w->nblocks || off < 1 || off > w->slots_per_block)
		return -1;
	return (int64_t) blk * w->slots_per_block + (off - 1);
}

static inline bool
test_bit(const HnswReachWalk *w, int64_t slot, int bit)
{
	int64_t		b = slot * 2 + bit;

	return (w->bits[b / 8] >> (b % 8)) & 1;
}

static inline void
flip_bit(HnswReachWalk *w, int64_t slot, int bit)
{
	int64_t		b = slot * 2 + bit;

	w->bits[b / 8] ^= (uint8_t) (1 << (b % 8));
}

bool
hnsw_reach_contains(const HnswReachWalk *w, uint32_t blk, uint16_t off)
{
	int64_t		slot = slot_of(w, blk, off);

	return slot < 0 || test_bit(w, slot, REACHED_BIT);
}

void
hnsw_reach_add(HnswReachWalk *w, uint32_t blk, uint16_t off)
{
	int64_t		slot = slot_of(w, blk, off);

	if (slot < 0 || test_bit(w, slot, REACHED_BIT))
		return;
	flip_bit(w, slot, REACHED_BIT);
	if (w->qlen < w->qcap)
		w->queue[(w->qhead + w->qlen++) % w->qcap] = slot;
	else
	{
		flip_bit(w, slot, WAITING_BIT);
		w->waiting++;
	}
}

/* Queue waiting slots until the FIFO is full. */
static void
requeue_waiting(HnswReachWalk *w)
{
	int64_t		nslots = (int64_t) w->nblocks * w->slots_per_block;

	for (int64_t slot = 0; slot < nslots && w->qlen < w->qcap; slot++)
	{
		if (!test_bit(w, slot, WAITING_BIT))
			continue;
		flip_bit(w, slot, WAITING_BIT);
		w->waiting--;
		w->queue[(w->qhead + w->qlen++) % w->qcap] = slot;
	}
}

bool
hnsw_reach_next(HnswReachWalk *w, uint32_t *blk, uint16_t *off)
{
	int64_t		slot;

	if (w->qlen == 0 && w->waiting > 0)
		requeue_waiting(w);
	if (w->qlen == 0)
		return false;
	slot = w->queue[w->qhead];
	w->qhead = (w->qhead + 1) % w->qcap;
	w->qlen--;
	*blk = (uint32_t) (slot / w->slots_per_block);
	*off = (uint16_t) (slot % w->slots_per_block + 1);
	return true;
}
