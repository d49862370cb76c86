// Compatibility scenarios driven by Apache Kafka's own Java client (kafka-clients 4.4.0).
//
// Usage: java -cp 'LIB/*:CLASSES' Compat <scenario> <bootstrap> <topic> [args...]
// Each scenario prints what the client observed as `OBS key=value` lines on stdout (the same
// lines against Sidestream and against a real Kafka broker, where the two agree; the
// differential harness compares them) and exits non-zero with a message if an expectation
// fails. Records are deterministic (key k<i>, value v<i>), so observations are comparable.

import java.time.Duration;
import java.util.*;
import java.util.concurrent.*;

import org.apache.kafka.clients.admin.*;
import org.apache.kafka.clients.consumer.*;
import org.apache.kafka.clients.producer.*;
import org.apache.kafka.common.*;
import org.apache.kafka.common.config.ConfigResource;
import org.apache.kafka.common.serialization.*;
import org.apache.kafka.streams.*;
import org.apache.kafka.streams.kstream.*;

public class Compat {
    static final Duration DEADLINE = Duration.ofSeconds(60);

    public static void main(String[] args) throws Exception {
        if (args.length < 3) {
            System.err.println("usage: Compat <scenario> <bootstrap> <topic> [args]");
            System.exit(2);
        }
        String scenario = args[0], bootstrap = args[1], topic = args[2];
        switch (scenario) {
            case "produce" -> produce(bootstrap, topic, Integer.parseInt(args[3]), Integer.parseInt(args[4]));
            case "consume-assign" -> consumeAssign(bootstrap, topic, Integer.parseInt(args[3]), args.length > 4 ? args[4] : null);
            case "admin" -> admin(bootstrap, topic);
            case "wordcount" -> wordCount(bootstrap, topic, args[3], args.length > 4 ? args[4] : StreamsConfig.AT_LEAST_ONCE);
            case "wordcount-restore" -> wordCountRestore(bootstrap, topic, args[3]);
            case "transactions" -> transactions(bootstrap, topic);
            case "consume-group" -> consumeGroup(bootstrap, topic, Integer.parseInt(args[3]), args[4], args[5]);
            default -> fail("unknown scenario " + scenario);
        }
    }

    static void obs(String key, Object value) {
        System.out.println("OBS " + key + "=" + value);
    }

    static void fail(String msg) {
        System.err.println("FAIL: " + msg);
        System.exit(1);
    }

    static void check(boolean cond, String msg) {
        if (!cond) fail(msg);
    }

    /** Creates the topic with the AdminClient, then the producer with every default (acks=all,
     *  enable.idempotence=true) sends n keyed records. */
    static void produce(String bootstrap, String topic, int n, int partitions) throws Exception {
        Properties ap = new Properties();
        ap.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        try (Admin admin = Admin.create(ap)) {
            admin.createTopics(List.of(new NewTopic(topic, partitions, (short) 1))).all().get();
        }
        Properties p = new Properties();
        p.put(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        p.put(ProducerConfig.KEY_SERIALIZER_CLASS_CONFIG, StringSerializer.class.getName());
        p.put(ProducerConfig.VALUE_SERIALIZER_CLASS_CONFIG, StringSerializer.class.getName());
        Map<Integer, List<Long>> offsets = new TreeMap<>();
        try (KafkaProducer<String, String> producer = new KafkaProducer<>(p)) {
            List<Future<RecordMetadata>> futures = new ArrayList<>();
            for (int i = 0; i < n; i++) {
                futures.add(producer.send(new ProducerRecord<>(topic, "k" + i, "v" + i)));
            }
            producer.flush();
            for (Future<RecordMetadata> f : futures) {
                RecordMetadata md = f.get(DEADLINE.toSeconds(), TimeUnit.SECONDS);
                offsets.computeIfAbsent(md.partition(), k -> new ArrayList<>()).add(md.offset());
            }
            // The config the client ran with: the defaults this scenario is about.
            obs("producer.acks", p.getOrDefault(ProducerConfig.ACKS_CONFIG, "all (default)"));
        }
        for (Map.Entry<Integer, List<Long>> e : offsets.entrySet()) {
            List<Long> got = e.getValue();
            List<Long> sorted = new ArrayList<>(got);
            Collections.sort(sorted);
            for (int i = 0; i < sorted.size(); i++) {
                check(sorted.get(i) == i, "partition " + e.getKey() + ": offsets not dense from 0: " + sorted);
            }
            check(got.equals(sorted), "partition " + e.getKey() + ": offsets not in send order");
            obs("produced.partition." + e.getKey(), got.size());
        }
        obs("produced.total", n);
    }

    /** A consumer with assign() on every partition, from the beginning, until n records. */
    static void consumeAssign(String bootstrap, String topic, int n, String groupId) throws Exception {
        Properties p = new Properties();
        p.put(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        p.put(ConsumerConfig.KEY_DESERIALIZER_CLASS_CONFIG, StringDeserializer.class.getName());
        p.put(ConsumerConfig.VALUE_DESERIALIZER_CLASS_CONFIG, StringDeserializer.class.getName());
        p.put(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG, "earliest");
        if (groupId != null) {
            p.put(ConsumerConfig.GROUP_ID_CONFIG, groupId);
            p.put(ConsumerConfig.ENABLE_AUTO_COMMIT_CONFIG, "false");
        }
        try (KafkaConsumer<String, String> consumer = new KafkaConsumer<>(p)) {
            List<TopicPartition> tps = new ArrayList<>();
            for (PartitionInfo pi : consumer.partitionsFor(topic, DEADLINE)) {
                tps.add(new TopicPartition(topic, pi.partition()));
            }
            tps.sort(Comparator.comparingInt(TopicPartition::partition));
            obs("consumer.partitions", tps.size());
            consumer.assign(tps);
            consumer.seekToBeginning(tps);
            Map<Integer, Long> next = new HashMap<>();
            Set<String> keys = new HashSet<>();
            long deadline = System.nanoTime() + DEADLINE.toNanos();
            int count = 0;
            while (count < n) {
                check(System.nanoTime() < deadline, "only " + count + " of " + n + " records within the deadline");
                for (ConsumerRecord<String, String> r : consumer.poll(Duration.ofMillis(500))) {
                    long want = next.getOrDefault(r.partition(), 0L);
                    check(r.offset() == want, "partition " + r.partition() + ": offset " + r.offset() + ", expected " + want);
                    next.put(r.partition(), want + 1);
                    check(r.value().equals("v" + r.key().substring(1)), "record " + r.key() + " has value " + r.value());
                    check(keys.add(r.key()), "duplicate record " + r.key());
                    count++;
                }
            }
            Map<TopicPartition, Long> end = consumer.endOffsets(tps, DEADLINE);
            for (TopicPartition tp : tps) {
                check(end.get(tp) == next.getOrDefault(tp.partition(), 0L).longValue(),
                      tp + ": end offset " + end.get(tp) + " but consumed up to " + next.get(tp.partition()));
                obs("consumed.partition." + tp.partition(), next.getOrDefault(tp.partition(), 0L));
            }
            obs("consumed.total", count);
        }
    }

    /** A consumer in a group (group.protocol classic or consumer) that subscribe()s, reads n
     *  records and commits; the committed offsets must equal the end offsets. */
    static void consumeGroup(String bootstrap, String topic, int n, String protocol, String groupId) throws Exception {
        Properties p = new Properties();
        p.put(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        p.put(ConsumerConfig.KEY_DESERIALIZER_CLASS_CONFIG, StringDeserializer.class.getName());
        p.put(ConsumerConfig.VALUE_DESERIALIZER_CLASS_CONFIG, StringDeserializer.class.getName());
        p.put(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG, "earliest");
        p.put(ConsumerConfig.GROUP_ID_CONFIG, groupId);
        p.put(ConsumerConfig.GROUP_PROTOCOL_CONFIG, protocol);
        p.put(ConsumerConfig.ENABLE_AUTO_COMMIT_CONFIG, "false");
        try (KafkaConsumer<String, String> consumer = new KafkaConsumer<>(p)) {
            consumer.subscribe(List.of(topic));
            Set<String> keys = new HashSet<>();
            long deadline = System.nanoTime() + DEADLINE.toNanos();
            while (keys.size() < n) {
                check(System.nanoTime() < deadline, "only " + keys.size() + " of " + n + " records within the deadline");
                for (ConsumerRecord<String, String> r : consumer.poll(Duration.ofMillis(500))) {
                    check(keys.add(r.key()), "duplicate record " + r.key());
                }
            }
            consumer.commitSync();
            Set<TopicPartition> assigned = consumer.assignment();
            obs("group.assigned", assigned.size());
            Map<TopicPartition, OffsetAndMetadata> committed = consumer.committed(assigned, DEADLINE);
            Map<TopicPartition, Long> end = consumer.endOffsets(assigned, DEADLINE);
            for (TopicPartition tp : assigned) {
                check(committed.get(tp) != null && committed.get(tp).offset() == end.get(tp),
                      tp + ": committed " + committed.get(tp) + ", end " + end.get(tp));
            }
            obs("group.consumed", keys.size());
        }
    }

    /** Kafka Streams word count (the quickstart's WordCountDemo topology): lines into
     *  `<topic>-in`, counts out of `<topic>-out`, read back until every word has its final count. */
    static void wordCount(String bootstrap, String topic, String stateDir, String guarantee) throws Exception {
        String in = topic + "-in", out = topic + "-out";
        Properties ap = new Properties();
        ap.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        try (Admin admin = Admin.create(ap)) {
            admin.createTopics(List.of(new NewTopic(in, 2, (short) 1), new NewTopic(out, 2, (short) 1))).all().get();
        }
        String[] lines = {"all streams lead to kafka", "hello kafka streams", "join kafka summit"};
        Map<String, Long> expected = new TreeMap<>();
        for (String line : lines) for (String w : line.split(" ")) expected.merge(w, 1L, Long::sum);
        Properties pp = new Properties();
        pp.put(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        pp.put(ProducerConfig.KEY_SERIALIZER_CLASS_CONFIG, StringSerializer.class.getName());
        pp.put(ProducerConfig.VALUE_SERIALIZER_CLASS_CONFIG, StringSerializer.class.getName());
        try (KafkaProducer<String, String> producer = new KafkaProducer<>(pp)) {
            for (String line : lines) producer.send(new ProducerRecord<>(in, null, line)).get();
        }

        Properties sp = new Properties();
        sp.put(StreamsConfig.APPLICATION_ID_CONFIG, "wordcount-" + topic);
        sp.put(StreamsConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        sp.put(StreamsConfig.STATE_DIR_CONFIG, stateDir);
        sp.put(StreamsConfig.DEFAULT_KEY_SERDE_CLASS_CONFIG, Serdes.String().getClass());
        sp.put(StreamsConfig.DEFAULT_VALUE_SERDE_CLASS_CONFIG, Serdes.String().getClass());
        sp.put(StreamsConfig.COMMIT_INTERVAL_MS_CONFIG, 100);
        sp.put(StreamsConfig.PROCESSING_GUARANTEE_CONFIG, guarantee);
        sp.put(StreamsConfig.STATESTORE_CACHE_MAX_BYTES_CONFIG, 0);
        sp.put(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG, "earliest");
        StreamsBuilder builder = new StreamsBuilder();
        builder.<String, String>stream(in)
            .flatMapValues(v -> Arrays.asList(v.toLowerCase(Locale.ROOT).split(" ")))
            .groupBy((k, w) -> w)
            .count()
            .toStream()
            .to(out, Produced.with(Serdes.String(), Serdes.Long()));
        Map<String, Long> counts = new TreeMap<>();
        try (KafkaStreams streams = new KafkaStreams(builder.build(), sp)) {
            streams.start();
            Properties cp = new Properties();
            cp.put(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
            cp.put(ConsumerConfig.KEY_DESERIALIZER_CLASS_CONFIG, StringDeserializer.class.getName());
            cp.put(ConsumerConfig.VALUE_DESERIALIZER_CLASS_CONFIG, LongDeserializer.class.getName());
            cp.put(ConsumerConfig.ISOLATION_LEVEL_CONFIG, "read_committed");
            try (KafkaConsumer<String, Long> consumer = new KafkaConsumer<>(cp)) {
                List<TopicPartition> tps = List.of(new TopicPartition(out, 0), new TopicPartition(out, 1));
                consumer.assign(tps);
                consumer.seekToBeginning(tps);
                long deadline = System.nanoTime() + DEADLINE.toNanos();
                while (!counts.equals(expected)) {
                    check(System.nanoTime() < deadline, "counts " + counts + ", expected " + expected
                          + " (streams state " + streams.state() + ")");
                    for (ConsumerRecord<String, Long> r : consumer.poll(Duration.ofMillis(500))) {
                        counts.put(r.key(), r.value());
                    }
                }
            }
        }
        obs("wordcount.words", counts.size());
        obs("wordcount.kafka", counts.get("kafka"));
    }

    /** Counts words of `in` into `out` until the counts read from `out` are `expected`. */
    static void countUntil(String bootstrap, String appId, String in, String out, String stateDir, Map<String, Long> expected) throws Exception {
        Properties sp = new Properties();
        sp.put(StreamsConfig.APPLICATION_ID_CONFIG, appId);
        sp.put(StreamsConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        sp.put(StreamsConfig.STATE_DIR_CONFIG, stateDir);
        sp.put(StreamsConfig.DEFAULT_KEY_SERDE_CLASS_CONFIG, Serdes.String().getClass());
        sp.put(StreamsConfig.DEFAULT_VALUE_SERDE_CLASS_CONFIG, Serdes.String().getClass());
        sp.put(StreamsConfig.COMMIT_INTERVAL_MS_CONFIG, 100);
        sp.put(StreamsConfig.STATESTORE_CACHE_MAX_BYTES_CONFIG, 0);
        // The changelog (a compacted internal topic) is cleaned as soon as anything is dirty.
        sp.put(StreamsConfig.topicPrefix("min.cleanable.dirty.ratio"), "0.01");
        sp.put(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG, "earliest");
        StreamsBuilder builder = new StreamsBuilder();
        builder.<String, String>stream(in).groupBy((k, w) -> w).count().toStream().to(out, Produced.with(Serdes.String(), Serdes.Long()));
        Map<String, Long> counts = new TreeMap<>();
        try (KafkaStreams streams = new KafkaStreams(builder.build(), sp)) {
            streams.start();
            Properties cp = new Properties();
            cp.put(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
            cp.put(ConsumerConfig.KEY_DESERIALIZER_CLASS_CONFIG, StringDeserializer.class.getName());
            cp.put(ConsumerConfig.VALUE_DESERIALIZER_CLASS_CONFIG, LongDeserializer.class.getName());
            try (KafkaConsumer<String, Long> consumer = new KafkaConsumer<>(cp)) {
                List<TopicPartition> tps = List.of(new TopicPartition(out, 0));
                consumer.assign(tps);
                consumer.seekToBeginning(tps);
                long deadline = System.nanoTime() + DEADLINE.toNanos();
                while (!counts.equals(expected)) {
                    check(System.nanoTime() < deadline, "counts " + counts + ", expected " + expected + " (streams state " + streams.state() + ")");
                    for (ConsumerRecord<String, Long> r : consumer.poll(Duration.ofMillis(500))) {
                        counts.put(r.key(), r.value());
                    }
                }
            }
        }
    }

    /** Every record of partition 0 of `topic`, from its log start to its end: (key, value as a long). */
    static List<Map.Entry<String, Long>> readLongs(String bootstrap, String topic) {
        Properties p = new Properties();
        p.put(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        p.put(ConsumerConfig.KEY_DESERIALIZER_CLASS_CONFIG, StringDeserializer.class.getName());
        p.put(ConsumerConfig.VALUE_DESERIALIZER_CLASS_CONFIG, ByteArrayDeserializer.class.getName());
        List<Map.Entry<String, Long>> out = new ArrayList<>();
        try (KafkaConsumer<String, byte[]> consumer = new KafkaConsumer<>(p)) {
            TopicPartition tp = new TopicPartition(topic, 0);
            consumer.assign(List.of(tp));
            consumer.seekToBeginning(List.of(tp));
            long end = consumer.endOffsets(List.of(tp)).get(tp);
            long deadline = System.nanoTime() + DEADLINE.toNanos();
            while (consumer.position(tp) < end) {
                check(System.nanoTime() < deadline, "reading " + topic + " stopped at " + consumer.position(tp) + " of " + end);
                for (ConsumerRecord<String, byte[]> r : consumer.poll(Duration.ofMillis(200))) {
                    out.add(Map.entry(r.key(), r.value() == null ? -1L : java.nio.ByteBuffer.wrap(r.value()).getLong()));
                }
            }
        }
        return out;
    }

    /**
     * Kafka Streams restores its state store from its changelog after compaction: 300 updates of
     * 5 counts, the app stopped, the changelog compacted by the server (far fewer records, the
     * latest count of each word), then the app started again with an empty state directory:
     * one more word counts on from the restored value.
     */
    static void wordCountRestore(String bootstrap, String topic, String stateDir) throws Exception {
        String in = topic + "-in", out = topic + "-out", appId = "restore-" + topic;
        Properties ap = new Properties();
        ap.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        Properties pp = new Properties();
        pp.put(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        pp.put(ProducerConfig.KEY_SERIALIZER_CLASS_CONFIG, StringSerializer.class.getName());
        pp.put(ProducerConfig.VALUE_SERIALIZER_CLASS_CONFIG, StringSerializer.class.getName());
        try (Admin admin = Admin.create(ap)) {
            admin.createTopics(List.of(new NewTopic(in, 1, (short) 1), new NewTopic(out, 1, (short) 1))).all().get();
            Map<String, Long> expected = new TreeMap<>();
            try (KafkaProducer<String, String> producer = new KafkaProducer<>(pp)) {
                for (int i = 0; i < 300; i++) {
                    String w = "w" + (i % 5);
                    producer.send(new ProducerRecord<>(in, null, w));
                    expected.merge(w, 1L, Long::sum);
                }
                producer.flush();
            }
            countUntil(bootstrap, appId, in, out, stateDir + "/first", expected);
            String changelog = admin.listTopics().names().get().stream()
                .filter(t -> t.startsWith(appId) && t.endsWith("-changelog")).findFirst().orElse(null);
            check(changelog != null, "no changelog topic of " + appId);
            ConfigResource res = new ConfigResource(ConfigResource.Type.TOPIC, changelog);
            obs("changelog.cleanup.policy", admin.describeConfigs(List.of(res)).all().get().get(res).get("cleanup.policy").value());
            // The server compacts the changelog: at most one record per word and a few not yet cleanable.
            long deadline = System.nanoTime() + DEADLINE.toNanos();
            List<Map.Entry<String, Long>> records = readLongs(bootstrap, changelog);
            while (records.size() > 50) {
                check(System.nanoTime() < deadline, "the changelog still holds " + records.size() + " records");
                Thread.sleep(200);
                records = readLongs(bootstrap, changelog);
            }
            Map<String, Long> latest = new TreeMap<>();
            for (Map.Entry<String, Long> r : records) latest.put(r.getKey(), r.getValue());
            check(latest.equals(expected), "compacted changelog " + latest + ", expected " + expected);
            obs("changelog.compacted", true);
            // Restarted with nothing local: the store comes back from the changelog.
            try (KafkaProducer<String, String> producer = new KafkaProducer<>(pp)) {
                producer.send(new ProducerRecord<>(in, null, "w0")).get();
            }
            expected.merge("w0", 1L, Long::sum);
            countUntil(bootstrap, appId, in, out, stateDir + "/second", expected);
            obs("restored.w0", expected.get("w0"));
        }
    }

    static KafkaProducer<String, String> txnProducer(String bootstrap, String txnId) {
        Properties p = new Properties();
        p.put(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        p.put(ProducerConfig.KEY_SERIALIZER_CLASS_CONFIG, StringSerializer.class.getName());
        p.put(ProducerConfig.VALUE_SERIALIZER_CLASS_CONFIG, StringSerializer.class.getName());
        p.put(ProducerConfig.TRANSACTIONAL_ID_CONFIG, txnId);
        KafkaProducer<String, String> producer = new KafkaProducer<>(p);
        producer.initTransactions();
        return producer;
    }

    /** Reads every partition of `topic` to its end offset (the LSO for read_committed). */
    static List<String> readAll(String bootstrap, String topic, String isolation) {
        Properties p = new Properties();
        p.put(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        p.put(ConsumerConfig.KEY_DESERIALIZER_CLASS_CONFIG, StringDeserializer.class.getName());
        p.put(ConsumerConfig.VALUE_DESERIALIZER_CLASS_CONFIG, StringDeserializer.class.getName());
        p.put(ConsumerConfig.ISOLATION_LEVEL_CONFIG, isolation);
        List<String> out = new ArrayList<>();
        try (KafkaConsumer<String, String> consumer = new KafkaConsumer<>(p)) {
            List<TopicPartition> tps = new ArrayList<>();
            for (PartitionInfo pi : consumer.partitionsFor(topic, DEADLINE)) tps.add(new TopicPartition(topic, pi.partition()));
            consumer.assign(tps);
            consumer.seekToBeginning(tps);
            Map<TopicPartition, Long> end = consumer.endOffsets(tps, DEADLINE);
            long deadline = System.nanoTime() + DEADLINE.toNanos();
            while (tps.stream().anyMatch(tp -> consumer.position(tp) < end.get(tp))) {
                check(System.nanoTime() < deadline, "read " + out.size() + " records, not at the end offsets " + end);
                for (ConsumerRecord<String, String> r : consumer.poll(Duration.ofMillis(200))) out.add(r.value());
            }
        }
        Collections.sort(out);
        return out;
    }

    /** A transactional producer commits one transaction, aborts one, commits another; a
     *  read_committed consumer sees only the committed records, read_uncommitted sees all; a
     *  second producer with the same transactional.id fences the first. */
    static void transactions(String bootstrap, String topic) throws Exception {
        Properties ap = new Properties();
        ap.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        try (Admin admin = Admin.create(ap)) {
            admin.createTopics(List.of(new NewTopic(topic, 2, (short) 1))).all().get();
        }
        List<String> committed = new ArrayList<>();
        try (KafkaProducer<String, String> producer = txnProducer(bootstrap, "java-" + topic)) {
            for (String prefix : List.of("c1", "ab", "c2")) {
                producer.beginTransaction();
                for (int i = 0; i < 10; i++) producer.send(new ProducerRecord<>(topic, "k" + i, prefix + "-" + i));
                if (prefix.equals("ab")) {
                    producer.flush(); // else the client drops the unsent records on abort
                    producer.abortTransaction();
                } else {
                    producer.commitTransaction();
                    for (int i = 0; i < 10; i++) committed.add(prefix + "-" + i);
                }
            }
        }
        Collections.sort(committed);
        List<String> readCommitted = readAll(bootstrap, topic, "read_committed");
        check(readCommitted.equals(committed), "read_committed saw " + readCommitted);
        obs("txn.read_committed", readCommitted.size());
        obs("txn.read_uncommitted", readAll(bootstrap, topic, "read_uncommitted").size());

        KafkaProducer<String, String> zombie = txnProducer(bootstrap, "java-fence-" + topic);
        zombie.beginTransaction();
        zombie.send(new ProducerRecord<>(topic, "z", "zombie")).get();
        try (KafkaProducer<String, String> live = txnProducer(bootstrap, "java-fence-" + topic)) {
            String outcome = "committed";
            try {
                zombie.commitTransaction();
            } catch (KafkaException e) {
                outcome = e.getClass().getSimpleName();
            }
            obs("txn.zombie.commit", outcome);
            live.beginTransaction();
            live.send(new ProducerRecord<>(topic, "l", "live"));
            live.commitTransaction();
        } finally {
            zombie.close(Duration.ZERO);
        }
        List<String> after = readAll(bootstrap, topic, "read_committed");
        check(!after.contains("zombie") && after.contains("live"), "after fencing read_committed saw " + after);
        obs("txn.after.fencing", after.size());
        try (Admin admin = Admin.create(ap)) {
            TransactionDescription d = admin.describeTransactions(List.of("java-" + topic)).all().get().get("java-" + topic);
            obs("txn.describe.state", d.state());
            long listed = admin.listTransactions().all().get().stream()
                .filter(l -> l.transactionalId().equals("java-fence-" + topic)).count();
            obs("txn.list.fence", listed);
        }
    }

    /** AdminClient: create (with a config), list, describe topics and configs, describe the
     *  cluster, list offsets (earliest, latest, max timestamp), delete. */
    static void admin(String bootstrap, String topic) throws Exception {
        Properties p = new Properties();
        p.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        try (Admin admin = Admin.create(p)) {
            NewTopic nt = new NewTopic(topic, 3, (short) 1).configs(Map.of("retention.ms", "3600000"));
            admin.createTopics(List.of(nt)).all().get();
            obs("create", "ok");
            try {
                admin.createTopics(List.of(new NewTopic(topic, 3, (short) 1))).all().get();
                fail("creating an existing topic succeeded");
            } catch (ExecutionException e) {
                obs("create.again", e.getCause().getClass().getSimpleName());
            }
            check(admin.listTopics().names().get().contains(topic), "listTopics misses " + topic);
            obs("list.contains", true);

            TopicDescription d = admin.describeTopics(List.of(topic)).allTopicNames().get().get(topic);
            obs("describe.partitions", d.partitions().size());
            obs("describe.internal", d.isInternal());
            check(d.topicId() != null && !d.topicId().equals(Uuid.ZERO_UUID), "no topic id");
            for (TopicPartitionInfo pi : d.partitions()) {
                check(pi.leader() != null, "partition " + pi.partition() + " has no leader");
                check(!pi.replicas().isEmpty() && !pi.isr().isEmpty(), "partition " + pi.partition() + " has no replicas/isr");
            }
            // DescribeTopicPartitions pages of 2 partitions: the client follows the cursor.
            TopicDescription paged = admin.describeTopics(List.of(topic), new DescribeTopicsOptions().partitionSizeLimitPerResponse(2))
                .allTopicNames().get().get(topic);
            obs("describe.paged.partitions", paged.partitions().stream().map(TopicPartitionInfo::partition).toList());
            try {
                admin.describeTopics(List.of(topic + "-missing")).allTopicNames().get();
                fail("describing a missing topic succeeded");
            } catch (ExecutionException e) {
                obs("describe.missing", e.getCause().getClass().getSimpleName());
            }

            ConfigResource res = new ConfigResource(ConfigResource.Type.TOPIC, topic);
            Config cfg = admin.describeConfigs(List.of(res)).all().get().get(res);
            ConfigEntry retention = cfg.get("retention.ms");
            check(retention != null, "describeConfigs has no retention.ms: " + cfg);
            obs("configs.retention.ms", retention.value() + " " + retention.source());
            ConfigEntry cleanup = cfg.get("cleanup.policy");
            check(cleanup != null, "describeConfigs has no cleanup.policy");
            obs("configs.cleanup.policy", cleanup.value() + " " + cleanup.source());

            DescribeClusterResult c = admin.describeCluster();
            Collection<Node> nodes = c.nodes().get();
            check(!nodes.isEmpty(), "no nodes");
            check(c.controller().get() != null, "no controller");
            check(c.clusterId().get() != null, "no cluster id");
            obs("cluster.nodes", nodes.size());

            // Offsets of an empty topic, then after 5 records in partition 0.
            TopicPartition tp0 = new TopicPartition(topic, 0);
            obs("offsets.empty.latest", admin.listOffsets(Map.of(tp0, OffsetSpec.latest())).all().get().get(tp0).offset());
            Properties pp = new Properties();
            pp.put(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
            pp.put(ProducerConfig.KEY_SERIALIZER_CLASS_CONFIG, StringSerializer.class.getName());
            pp.put(ProducerConfig.VALUE_SERIALIZER_CLASS_CONFIG, StringSerializer.class.getName());
            long base = System.currentTimeMillis() - 10_000;
            try (KafkaProducer<String, String> producer = new KafkaProducer<>(pp)) {
                for (int i = 0; i < 5; i++) {
                    producer.send(new ProducerRecord<>(topic, 0, base + i * 1000L, "k" + i, "v" + i)).get();
                }
            }
            obs("offsets.earliest", admin.listOffsets(Map.of(tp0, OffsetSpec.earliest())).all().get().get(tp0).offset());
            obs("offsets.latest", admin.listOffsets(Map.of(tp0, OffsetSpec.latest())).all().get().get(tp0).offset());
            ListOffsetsResult.ListOffsetsResultInfo max =
                admin.listOffsets(Map.of(tp0, OffsetSpec.maxTimestamp())).all().get().get(tp0);
            obs("offsets.maxTimestamp", max.offset() + " ts+" + (max.timestamp() - base));
            obs("offsets.forTimestamp.after", admin.listOffsets(Map.of(tp0, OffsetSpec.forTimestamp(base + 60_000))).all().get().get(tp0).offset());

            // deleteRecords: the log start moves to 2 (inside the records produced one by one),
            // earliest follows; beyond the high watermark is refused.
            DeletedRecords deleted = admin.deleteRecords(Map.of(tp0, RecordsToDelete.beforeOffset(2))).lowWatermarks().get(tp0).get();
            obs("deleteRecords.lowWatermark", deleted.lowWatermark());
            obs("offsets.earliest.afterDelete", admin.listOffsets(Map.of(tp0, OffsetSpec.earliest())).all().get().get(tp0).offset());
            try {
                admin.deleteRecords(Map.of(tp0, RecordsToDelete.beforeOffset(99))).all().get();
                fail("deleteRecords beyond the high watermark succeeded");
            } catch (ExecutionException e) {
                obs("deleteRecords.beyond", e.getCause().getClass().getSimpleName());
            }

            admin.deleteTopics(List.of(topic)).all().get();
            obs("delete", "ok");
            long deadline = System.nanoTime() + DEADLINE.toNanos();
            while (admin.listTopics().names().get().contains(topic)) {
                check(System.nanoTime() < deadline, "topic still listed after delete");
                Thread.sleep(100);
            }
            obs("list.after.delete.contains", false);
        }
    }
}
