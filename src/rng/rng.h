/*
 * rng.h
 *		Deterministic random numbers for the extension, the unit tests and
 *		the bench drivers: splitmix64 (Steele, Lea, Flood 2014).  No
 *		PostgreSQL includes.
 *
 * One word of state that the caller owns and seeds by assignment, the same
 * stream on every platform, passes BigCrush.  The streams are part of what
 * the callers promise: generated data sets are the same bytes for the same
 * parameters, and GNN and LoRA weights start the same for the same seed, so
 * none of these functions may change what it returns for a given state.
 */
#ifndef GNNVEC_RNG_H
#define GNNVEC_RNG_H

#include <stdint.h>

/* The next 64 random bits. */
extern uint64_t splitmix64_next(uint64_t *state);

/* Uniform in [0, 1): the top 53 bits, a double's mantissa. */
extern double splitmix64_unit(uint64_t *state);

/* Uniform in (0, 1): the centre of the same 2^-53 cell, so log() is finite. */
extern double splitmix64_unit_open(uint64_t *state);

/* N(0, 1) by Box-Muller from two splitmix64_unit_open draws, one per call. */
extern double splitmix64_normal(uint64_t *state);

#endif							/* GNNVEC_RNG_H */
