// Package tally folds counted things into groups by a key, the biggest
// group first: how lbdoctor sums up drops by place and path for people.
package tally

import (
	"sort"
	"strconv"
)

// Group is the members of items that share a key.
type Group[T any] struct {
	Key     string
	First   T      // the first member, standing for all of them
	Count   uint64 // the members' counts, summed
	Members int
}

// By groups items by key, summing count; groups with equal counts keep the
// order of their first members.
func By[T any](items []T, key func(T) string, count func(T) uint64) []Group[T] {
	var out []Group[T]
	index := map[string]int{}
	for _, it := range items {
		k := key(it)
		i, ok := index[k]
		if !ok {
			i = len(out)
			index[k] = i
			out = append(out, Group[T]{Key: k, First: it})
		}
		out[i].Count += count(it)
		out[i].Members++
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Count > out[j].Count })
	return out
}

// Of says n of a noun: "1 flow", "3 flows".
func Of(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return strconv.Itoa(n) + " " + noun + "s"
}
