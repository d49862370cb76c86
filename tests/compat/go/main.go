// Compatibility scenarios driven by franz-go (kgo, kadm), every client option at its default.
//
// Usage: franz-compat <scenario> <bootstrap> <topic> [n]
// Like tests/compat/java/Compat.java, each scenario prints what the client observed as
// `OBS key=value` lines and exits non-zero with a message if an expectation fails.
package main

import (
	"context"
	"fmt"
	"os"
	"sort"
	"strconv"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
)

const deadline = 60 * time.Second

func obs(key string, value any) { fmt.Printf("OBS %s=%v\n", key, value) }

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "FAIL: "+format+"\n", args...)
	os.Exit(1)
}

func check(cond bool, format string, args ...any) {
	if !cond {
		fail(format, args...)
	}
}

func main() {
	if len(os.Args) < 4 {
		fmt.Fprintln(os.Stderr, "usage: franz-compat <produce|consume|admin> <bootstrap> <topic> [n]")
		os.Exit(2)
	}
	scenario, bootstrap, topic := os.Args[1], os.Args[2], os.Args[3]
	n := 0
	if len(os.Args) > 4 {
		var err error
		if n, err = strconv.Atoi(os.Args[4]); err != nil {
			fail("bad n: %v", err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), deadline)
	defer cancel()
	switch scenario {
	case "produce":
		produce(ctx, bootstrap, topic, n)
	case "consume":
		consume(ctx, bootstrap, topic, n)
	case "admin":
		admin(ctx, bootstrap, topic)
	default:
		fail("unknown scenario %s", scenario)
	}
}

func newClient(bootstrap string, opts ...kgo.Opt) *kgo.Client {
	cl, err := kgo.NewClient(append([]kgo.Opt{kgo.SeedBrokers(bootstrap)}, opts...)...)
	if err != nil {
		fail("new client: %v", err)
	}
	return cl
}

// produce: creates the topic (3 partitions; franz-go never auto-creates by default), then the
// default producer (idempotent, acks=all), n keyed records; offsets dense from 0 and in send
// order per partition.
func produce(ctx context.Context, bootstrap, topic string, n int) {
	adm := kadm.NewClient(newClient(bootstrap))
	created, err := adm.CreateTopic(ctx, 3, -1, nil, topic)
	check(err == nil && created.Err == nil, "create: %v %v", err, created.Err)
	adm.Close()
	cl := newClient(bootstrap, kgo.DefaultProduceTopic(topic))
	defer cl.Close()
	// Every record in flight at once (as an application would send), then wait for all.
	records := make([]*kgo.Record, n)
	errs := make(chan error, n)
	for i := range records {
		records[i] = &kgo.Record{Key: []byte(fmt.Sprintf("k%d", i)), Value: []byte(fmt.Sprintf("v%d", i))}
		cl.Produce(ctx, records[i], func(_ *kgo.Record, err error) { errs <- err })
	}
	for range records {
		if err := <-errs; err != nil {
			fail("produce: %v", err)
		}
	}
	offsets := map[int32][]int64{}
	for _, r := range records {
		offsets[r.Partition] = append(offsets[r.Partition], r.Offset)
	}
	parts := make([]int, 0, len(offsets))
	for p := range offsets {
		parts = append(parts, int(p))
	}
	sort.Ints(parts)
	for _, p := range parts {
		for i, o := range offsets[int32(p)] {
			check(o == int64(i), "partition %d: record %d (in send order) got offset %d", p, i, o)
		}
		obs(fmt.Sprintf("produced.partition.%d", p), len(offsets[int32(p)]))
	}
	obs("produced.total", n)
}

// consume: direct partition consumption (no group) of every partition from the start, until n.
func consume(ctx context.Context, bootstrap, topic string, n int) {
	adm := kadm.NewClient(newClient(bootstrap))
	defer adm.Close()
	td, err := adm.ListTopics(ctx, topic)
	check(err == nil && td.Has(topic) && td[topic].Err == nil, "list topic %s: %v %v", topic, err, td)
	parts := map[int32]kgo.Offset{}
	for _, p := range td[topic].Partitions.Numbers() {
		parts[p] = kgo.NewOffset().AtStart()
	}
	obs("consumer.partitions", len(parts))
	cl := newClient(bootstrap, kgo.ConsumePartitions(map[string]map[int32]kgo.Offset{topic: parts}))
	defer cl.Close()
	next := map[int32]int64{}
	seen := map[string]bool{}
	count := 0
	for count < n {
		fetches := cl.PollFetches(ctx)
		if ctx.Err() != nil {
			fail("only %d of %d records before the deadline", count, n)
		}
		fetches.EachError(func(t string, p int32, err error) { fail("fetch %s/%d: %v", t, p, err) })
		fetches.EachRecord(func(r *kgo.Record) {
			check(r.Offset == next[r.Partition], "partition %d: offset %d, expected %d", r.Partition, r.Offset, next[r.Partition])
			next[r.Partition]++
			k := string(r.Key)
			check(string(r.Value) == "v"+k[1:], "record %s has value %s", k, r.Value)
			check(!seen[k], "duplicate record %s", k)
			seen[k] = true
			count++
		})
	}
	ends, err := adm.ListEndOffsets(ctx, topic)
	check(err == nil, "list end offsets: %v", err)
	for _, p := range td[topic].Partitions.Numbers() {
		o, ok := ends.Lookup(topic, p)
		check(ok && o.Err == nil && o.Offset == next[p], "partition %d: end %d (%v), consumed to %d", p, o.Offset, o.Err, next[p])
		obs(fmt.Sprintf("consumed.partition.%d", p), next[p])
	}
	obs("consumed.total", count)
}

// admin: kadm create (with a config), list, describe configs, brokers, offsets, delete.
func admin(ctx context.Context, bootstrap, topic string) {
	adm := kadm.NewClient(newClient(bootstrap))
	defer adm.Close()
	retention := "3600000"
	created, err := adm.CreateTopic(ctx, 3, 1, map[string]*string{"retention.ms": &retention}, topic)
	check(err == nil && created.Err == nil, "create: %v %v", err, created.Err)
	obs("create", "ok")
	again, _ := adm.CreateTopic(ctx, 3, 1, nil, topic) // the error is again.Err
	check(again.Err != nil, "creating an existing topic succeeded")
	obs("create.again", again.Err)

	td, err := adm.ListTopics(ctx)
	check(err == nil && td.Has(topic), "list: %v", err)
	obs("list.partitions", len(td[topic].Partitions))
	for _, p := range td[topic].Partitions.Sorted() {
		check(p.Err == nil && p.Leader >= 0 && len(p.Replicas) > 0 && len(p.ISR) > 0, "partition %d: %+v", p.Partition, p)
	}

	rc, err := adm.DescribeTopicConfigs(ctx, topic)
	check(err == nil, "describe configs: %v", err)
	cfg, err := rc.On(topic, nil)
	check(err == nil && cfg.Err == nil, "describe configs of %s: %v %v", topic, err, cfg.Err)
	for _, c := range cfg.Configs {
		if c.Key == "retention.ms" || c.Key == "cleanup.policy" {
			obs("configs."+c.Key, c.MaybeValue()+" "+c.Source.String())
		}
	}

	md, err := adm.BrokerMetadata(ctx)
	check(err == nil && len(md.Brokers) > 0 && md.Cluster != "", "broker metadata: %v %+v", err, md)
	obs("cluster.brokers", len(md.Brokers))

	// Five records into partition 0, then offsets.
	cl := newClient(bootstrap, kgo.DefaultProduceTopic(topic), kgo.RecordPartitioner(kgo.ManualPartitioner()))
	for i := 0; i < 5; i++ {
		res := cl.ProduceSync(ctx, &kgo.Record{Partition: 0, Key: []byte(fmt.Sprintf("k%d", i)), Value: []byte("v")})
		check(res.FirstErr() == nil, "produce: %v", res.FirstErr())
	}
	cl.Close()
	start, err := adm.ListStartOffsets(ctx, topic)
	check(err == nil, "start offsets: %v", err)
	end, err := adm.ListEndOffsets(ctx, topic)
	check(err == nil, "end offsets: %v", err)
	s0, _ := start.Lookup(topic, 0)
	e0, _ := end.Lookup(topic, 0)
	e1, _ := end.Lookup(topic, 1)
	obs("offsets.p0", fmt.Sprintf("%d-%d", s0.Offset, e0.Offset))
	obs("offsets.p1.end", e1.Offset)

	deleted, err := adm.DeleteTopic(ctx, topic)
	check(err == nil && deleted.Err == nil, "delete: %v %v", err, deleted.Err)
	obs("delete", "ok")
	for {
		td, err := adm.ListTopics(ctx)
		check(err == nil, "list after delete: %v", err)
		if !td.Has(topic) {
			break
		}
		check(ctx.Err() == nil, "topic still listed after delete")
		time.Sleep(100 * time.Millisecond)
	}
	obs("list.after.delete.contains", false)
}
