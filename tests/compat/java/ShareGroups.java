import java.time.Duration;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.Set;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.atomic.AtomicBoolean;

import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.admin.AlterConfigOp;
import org.apache.kafka.clients.admin.ConfigEntry;
import org.apache.kafka.clients.consumer.AcknowledgeType;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.ConsumerRecords;
import org.apache.kafka.clients.consumer.KafkaShareConsumer;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.common.config.ConfigResource;
import org.apache.kafka.common.serialization.StringDeserializer;
import org.apache.kafka.common.serialization.StringSerializer;

/**
 * Share group (KIP-932) scenarios with Kafka 4.4's KafkaShareConsumer, run by
 * tests/integration/test_share_groups.py against Sidestream (and against Kafka itself with
 * scripts/kafka-reference-broker). Every delivery is printed as
 * {@code DELIVERY member=M offset=O count=C value=V action=A}; the test decides from them.
 *
 * <pre>
 * configure BOOTSTRAP GROUP key=value...          IncrementalAlterConfigs on the GROUP resource
 * produce BOOTSTRAP TOPIC COUNT                   COUNT records "v0".."v{COUNT-1}", acks=all
 * consume BOOTSTRAP TOPIC GROUP MEMBERS OFFSETS TIMEOUT_MS [POLICY]
 *     MEMBERS consumers (threads, explicit acknowledgement) until every offset below OFFSETS is
 *     done (accepted, rejected, or released at its last delivery), or TIMEOUT_MS passes.
 *     POLICY: comma-separated OFFSET:ACTION[:UNTIL_COUNT] (ACTION release|reject|accept; a
 *     rule holds while the delivery count is below UNTIL_COUNT, default forever), limit=N (the
 *     group's share.delivery.count.limit, default 5) and idle=MS (a member stops after MS without
 *     records, once it got some); other records are accepted.
 * hold BOOTSTRAP TOPIC GROUP                       polls until it holds records, prints them,
 *     then waits without acknowledging (the test kills it).
 * </pre>
 */
public class ShareGroups {
    public static void main(String[] args) throws Exception {
        switch (args[0]) {
            case "configure" -> configure(args[1], args[2], java.util.Arrays.copyOfRange(args, 3, args.length));
            case "produce" -> produce(args[1], args[2], Integer.parseInt(args[3]));
            case "consume" -> consume(args[1], args[2], args[3], Integer.parseInt(args[4]), Integer.parseInt(args[5]),
                    Long.parseLong(args[6]), args.length > 7 ? args[7] : "");
            case "hold" -> hold(args[1], args[2], args[3]);
            default -> throw new IllegalArgumentException("unknown scenario " + args[0]);
        }
    }

    static void configure(String bootstrap, String group, String[] pairs) throws Exception {
        Properties p = new Properties();
        p.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        try (Admin admin = Admin.create(p)) {
            List<AlterConfigOp> ops = new ArrayList<>();
            for (String kv : pairs) {
                String[] s = kv.split("=", 2);
                ops.add(new AlterConfigOp(new ConfigEntry(s[0], s[1]), AlterConfigOp.OpType.SET));
            }
            admin.incrementalAlterConfigs(Map.of(new ConfigResource(ConfigResource.Type.GROUP, group), ops)).all().get();
        }
        System.out.println("OBS configured=true");
    }

    static void produce(String bootstrap, String topic, int count) throws Exception {
        Properties p = new Properties();
        p.put(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        p.put(ProducerConfig.ACKS_CONFIG, "all");
        p.put(ProducerConfig.KEY_SERIALIZER_CLASS_CONFIG, StringSerializer.class.getName());
        p.put(ProducerConfig.VALUE_SERIALIZER_CLASS_CONFIG, StringSerializer.class.getName());
        try (KafkaProducer<String, String> producer = new KafkaProducer<>(p)) {
            for (int i = 0; i < count; i++) {
                producer.send(new ProducerRecord<>(topic, "v" + i));
            }
            producer.flush();
        }
        System.out.println("OBS produced=" + count);
    }

    static KafkaShareConsumer<String, String> consumer(String bootstrap, String group, String clientId) {
        Properties p = new Properties();
        p.put("bootstrap.servers", bootstrap);
        p.put("group.id", group);
        p.put("client.id", clientId);
        p.put("share.acknowledgement.mode", "explicit");
        p.put("max.poll.records", "10");
        p.put("key.deserializer", StringDeserializer.class.getName());
        p.put("value.deserializer", StringDeserializer.class.getName());
        return new KafkaShareConsumer<>(p);
    }

    record Rule(AcknowledgeType type, int untilCount) {}

    static Map<Long, Rule> policy(String spec) {
        Map<Long, Rule> rules = new HashMap<>();
        for (String r : spec.split(",")) {
            if (r.isBlank() || r.contains("=")) continue;
            String[] s = r.split(":");
            AcknowledgeType t = AcknowledgeType.valueOf(s[1].toUpperCase());
            rules.put(Long.parseLong(s[0]), new Rule(t, s.length > 2 ? Integer.parseInt(s[2]) : Integer.MAX_VALUE));
        }
        return rules;
    }

    static void consume(String bootstrap, String topic, String group, int members, int offsets, long timeoutMs, String spec)
            throws Exception {
        Map<Long, Rule> rules = policy(spec);
        int limit = 5;
        long idle = Long.MAX_VALUE;
        for (String r : spec.split(",")) {
            if (r.startsWith("limit=")) limit = Integer.parseInt(r.substring(6));
            if (r.startsWith("idle=")) idle = Long.parseLong(r.substring(5));
        }
        final int deliveryLimit = limit;
        final long idleMs = idle;
        Set<Long> done = ConcurrentHashMap.newKeySet();
        AtomicBoolean stop = new AtomicBoolean();
        long deadline = System.currentTimeMillis() + timeoutMs;
        List<Thread> threads = new ArrayList<>();
        List<Throwable> failures = new ArrayList<>();
        for (int m = 0; m < members; m++) {
            final int member = m;
            Thread t = new Thread(() -> {
                try (KafkaShareConsumer<String, String> c = consumer(bootstrap, group, "share-" + member)) {
                    c.subscribe(List.of(topic));
                    long lastRecordAt = Long.MAX_VALUE;
                    while (!stop.get() && System.currentTimeMillis() < deadline) {
                        ConsumerRecords<String, String> records = c.poll(Duration.ofMillis(200));
                        long now = System.currentTimeMillis();
                        if (!records.isEmpty()) lastRecordAt = now;
                        else if (lastRecordAt != Long.MAX_VALUE && now - lastRecordAt > idleMs) break;
                        for (ConsumerRecord<String, String> r : records) {
                            int count = r.deliveryCount().map(Short::intValue).orElse(-1);
                            Rule rule = rules.get(r.offset());
                            AcknowledgeType type = rule != null && count < rule.untilCount() ? rule.type() : AcknowledgeType.ACCEPT;
                            c.acknowledge(r, type);
                            synchronized (ShareGroups.class) {
                                System.out.println("DELIVERY member=" + member + " offset=" + r.offset() + " count=" + count
                                        + " value=" + r.value() + " action=" + type.name());
                            }
                            // Done: accepted, rejected, or released at its last allowed delivery (archived).
                            if (type != AcknowledgeType.RELEASE || count >= deliveryLimit) done.add(r.offset());
                        }
                        if (!records.isEmpty()) c.commitSync();
                        if (done.size() >= offsets) stop.set(true);
                    }
                } catch (Throwable e) {
                    synchronized (failures) { failures.add(e); }
                    stop.set(true);
                }
            });
            threads.add(t);
            t.start();
        }
        for (Thread t : threads) t.join();
        if (!failures.isEmpty()) throw new RuntimeException(failures.get(0));
        System.out.println("OBS done=" + done.size());
    }

    static void hold(String bootstrap, String topic, String group) throws Exception {
        try (KafkaShareConsumer<String, String> c = consumer(bootstrap, group, "holder")) {
            c.subscribe(List.of(topic));
            long deadline = System.currentTimeMillis() + 60_000;
            while (System.currentTimeMillis() < deadline) {
                ConsumerRecords<String, String> records = c.poll(Duration.ofMillis(200));
                if (records.isEmpty()) continue;
                for (ConsumerRecord<String, String> r : records) {
                    System.out.println("DELIVERY member=holder offset=" + r.offset() + " count="
                            + r.deliveryCount().map(Short::intValue).orElse(-1) + " value=" + r.value() + " action=HOLD");
                }
                System.out.println("OBS holding=" + records.count());
                System.out.flush();
                Thread.sleep(600_000);
            }
        }
    }
}
