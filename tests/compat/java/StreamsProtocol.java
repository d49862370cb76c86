// Kafka Streams 4.4 with the KIP-1071 streams rebalance protocol (group.protocol=streams): the
// broker assigns tasks. Used by tests/integration/test_streams_protocol.py.
//
// Usage: java -cp 'LIB/*:CLASSES' StreamsProtocol <mode> <bootstrap> [args...]
//   topics  <bootstrap> <in> <out> <partitions>                 create the input and output topics
//   produce <bootstrap> <topic> <line>...                       one record per line (no key)
//   app     <bootstrap> <appId> <in> <out> <stateDir> <guarantee>
//           runs word count until stdin closes; prints `TASKS <active tasks>` whenever this
//           instance's active tasks change and `STATE <state>` on every state change
//   expect  <bootstrap> <out> <word=count,...>                  reads <out> (read_committed) until
//           the latest count of every word is as given (exit 1 at the deadline)
// Prints `OBS key=value` lines for what it observed.

import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.time.Duration;
import java.util.*;
import java.util.concurrent.*;

import org.apache.kafka.clients.admin.*;
import org.apache.kafka.clients.consumer.*;
import org.apache.kafka.clients.producer.*;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.serialization.*;
import org.apache.kafka.streams.*;
import org.apache.kafka.streams.kstream.*;

public class StreamsProtocol {
    static final Duration DEADLINE = Duration.ofSeconds(90);

    public static void main(String[] args) throws Exception {
        String mode = args[0], bootstrap = args[1];
        switch (mode) {
            case "topics" -> topics(bootstrap, args[2], args[3], Integer.parseInt(args[4]));
            case "produce" -> produce(bootstrap, args[2], Arrays.copyOfRange(args, 3, args.length));
            case "app" -> app(bootstrap, args[2], args[3], args[4], args[5], args[6]);
            case "expect" -> expect(bootstrap, args[2], args[3]);
            default -> { System.err.println("unknown mode " + mode); System.exit(2); }
        }
    }

    static void topics(String bootstrap, String in, String out, int partitions) throws Exception {
        Properties ap = new Properties();
        ap.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        try (Admin admin = Admin.create(ap)) {
            admin.createTopics(List.of(new NewTopic(in, partitions, (short) 1), new NewTopic(out, partitions, (short) 1))).all().get();
        }
    }

    static void produce(String bootstrap, String topic, String[] lines) throws Exception {
        Properties pp = new Properties();
        pp.put(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        pp.put(ProducerConfig.KEY_SERIALIZER_CLASS_CONFIG, StringSerializer.class.getName());
        pp.put(ProducerConfig.VALUE_SERIALIZER_CLASS_CONFIG, StringSerializer.class.getName());
        try (KafkaProducer<String, String> producer = new KafkaProducer<>(pp)) {
            int i = 0;
            for (String line : lines) producer.send(new ProducerRecord<>(topic, "line" + (i++), line)).get();
        }
        System.out.println("OBS produced=" + lines.length);
    }

    static void app(String bootstrap, String appId, String in, String out, String stateDir, String guarantee) throws Exception {
        Properties sp = new Properties();
        sp.put(StreamsConfig.APPLICATION_ID_CONFIG, appId);
        sp.put(StreamsConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        sp.put(StreamsConfig.STATE_DIR_CONFIG, stateDir);
        sp.put(StreamsConfig.DEFAULT_KEY_SERDE_CLASS_CONFIG, Serdes.String().getClass());
        sp.put(StreamsConfig.DEFAULT_VALUE_SERDE_CLASS_CONFIG, Serdes.String().getClass());
        sp.put(StreamsConfig.COMMIT_INTERVAL_MS_CONFIG, 100);
        sp.put(StreamsConfig.PROCESSING_GUARANTEE_CONFIG, guarantee);
        sp.put(StreamsConfig.STATESTORE_CACHE_MAX_BYTES_CONFIG, 0);
        sp.put("group.protocol", "streams");
        sp.put(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG, "earliest");
        StreamsBuilder builder = new StreamsBuilder();
        builder.<String, String>stream(in)
            .flatMapValues(v -> Arrays.asList(v.toLowerCase(Locale.ROOT).split(" ")))
            .groupBy((k, w) -> w)
            .count()
            .toStream()
            .to(out, Produced.with(Serdes.String(), Serdes.Long()));
        KafkaStreams streams = new KafkaStreams(builder.build(), sp);
        streams.setStateListener((now, before) -> say("STATE " + now));
        streams.setUncaughtExceptionHandler(e -> {
            say("ERROR " + e);
            return org.apache.kafka.streams.errors.StreamsUncaughtExceptionHandler.StreamThreadExceptionResponse.REPLACE_THREAD;
        });
        streams.start();
        // Stops when stdin closes (the test's way to stop an instance cleanly).
        Thread stdin = new Thread(() -> {
            try (BufferedReader r = new BufferedReader(new InputStreamReader(System.in))) {
                while (r.readLine() != null) { }
            } catch (Exception ignored) { }
        });
        stdin.setDaemon(true);
        stdin.start();
        String last = null;
        while (stdin.isAlive()) {
            TreeSet<String> tasks = new TreeSet<>();
            try {
                for (ThreadMetadata t : streams.metadataForLocalThreads()) {
                    for (TaskMetadata task : t.activeTasks()) tasks.add(task.taskId().toString());
                }
            } catch (IllegalStateException notRunning) { }
            String now = String.join(",", tasks);
            if (!now.equals(last)) {
                say("TASKS " + now);
                last = now;
            }
            Thread.sleep(100);
        }
        streams.close(Duration.ofSeconds(30));
        say("CLOSED");
    }

    static synchronized void say(String line) {
        System.out.println(line);
        System.out.flush();
    }

    static void expect(String bootstrap, String out, String spec) throws Exception {
        Map<String, Long> expected = new TreeMap<>();
        for (String kv : spec.split(",")) {
            String[] p = kv.split("=");
            expected.put(p[0], Long.parseLong(p[1]));
        }
        Properties cp = new Properties();
        cp.put(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        cp.put(ConsumerConfig.KEY_DESERIALIZER_CLASS_CONFIG, StringDeserializer.class.getName());
        cp.put(ConsumerConfig.VALUE_DESERIALIZER_CLASS_CONFIG, LongDeserializer.class.getName());
        cp.put(ConsumerConfig.ISOLATION_LEVEL_CONFIG, "read_committed");
        Map<String, Long> counts = new TreeMap<>();
        try (KafkaConsumer<String, Long> consumer = new KafkaConsumer<>(cp)) {
            List<TopicPartition> tps = new ArrayList<>();
            for (var p : consumer.partitionsFor(out)) tps.add(new TopicPartition(out, p.partition()));
            consumer.assign(tps);
            consumer.seekToBeginning(tps);
            long deadline = System.nanoTime() + DEADLINE.toNanos();
            while (!counts.equals(expected)) {
                if (System.nanoTime() > deadline) {
                    System.err.println("counts " + counts + ", expected " + expected);
                    System.exit(1);
                }
                for (ConsumerRecord<String, Long> r : consumer.poll(Duration.ofMillis(300))) counts.put(r.key(), r.value());
            }
        }
        System.out.println("OBS counts=" + counts);
    }
}
