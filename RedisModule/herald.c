/*
 * Herald's Redis module: HERALD.APPEND, the append script's common path in C, and HERALD.ACK,
 * the ACK's plain commands with message status as one command.
 *
 * A node on a Redis that loaded this module (`loadmodule /path/to/herald.so`) appends through
 * it instead of the Lua script (Docs/store.md, "The Redis module"): the same keys, the same
 * arguments, the same replies, the same stream entries, at about a third less of Redis's CPU.
 * Whatever the script decides beyond the common path (a new counter where the previous schema
 * left a queue to migrate, a queue that would pass its cap) is left to it: the module then
 * answers -FALLBACK before it has written anything, and the node runs the script.
 *
 *     HERALD.APPEND 1 cap slack retention keep numkeys KEYS... ARGV...
 *
 * 1 is this interface's version (any other is refused, so a node never half-understands a
 * module of another release); cap, slack, retention (ms; 0: no message status) and keep are
 * the settings the node writes into its script; KEYS and ARGV are the script's
 * (RedisPushStore.appendScript documents them).
 *
 *     HERALD.ACK 1 now retention numkeys stream STATUS... [sequence status sent]...
 *
 * acknowledges messages of one device as the node's plain commands would (HSETNX s, HSETNX k,
 * PEXPIRE on each message's status key, then one XDEL): for each message, its stream entry's
 * sequence, the index of its status key among the keys (1-based; 0: none) and when it was sent
 * (ms; 0: not known here, so `s` is left alone). Replies the number of entries deleted. Keys of
 * another type than the node writes are left to the plain commands (-FALLBACK, nothing written).
 *
 * Every write is replicated as the plain command it equals (INCRBY, XADD, HSET, PEXPIREAT, XDEL),
 * so replicas and the AOF need no module. The module API is declared here from its
 * documentation (https://redis.io/docs/reference/modules/modules-api-ref/); Redis hands each
 * function over by name at load time.
 *
 * Build: cc -O2 -shared -fPIC -o herald.so herald.c   (Redis 7.0 or later: RedisModule_StreamAdd)
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct RedisModuleCtx RedisModuleCtx;
typedef struct RedisModuleKey RedisModuleKey;
typedef struct RedisModuleString RedisModuleString;
typedef struct RedisModuleStreamID { uint64_t ms; uint64_t seq; } RedisModuleStreamID;
typedef int (*RedisModuleCmdFunc)(RedisModuleCtx *ctx, RedisModuleString **argv, int argc);

enum { RM_OK = 0, RM_ERR = 1, RM_APIVER_1 = 1, RM_READ = 1, RM_WRITE = 2 };
enum { RM_KEYTYPE_EMPTY = 0, RM_KEYTYPE_STRING = 1, RM_KEYTYPE_HASH = 3, RM_KEYTYPE_STREAM = 7 };
enum { RM_HASH_EXISTS = 1 << 3 };
#define RM_NO_EXPIRE (-1LL)
#define INTERFACE_VERSION 1

#define API(ret, name, args) static ret(*RedisModule_##name) args
API(int, GetApi, (const char *, void *));
API(int, SetModuleAttribs, (RedisModuleCtx *, const char *, int, int));
API(int, CreateCommand, (RedisModuleCtx *, const char *, RedisModuleCmdFunc, const char *, int, int, int));
API(int, IsKeysPositionRequest, (RedisModuleCtx *));
API(void, KeyAtPos, (RedisModuleCtx *, int));
API(void *, OpenKey, (RedisModuleCtx *, RedisModuleString *, int));
API(void, CloseKey, (RedisModuleKey *));
API(int, KeyType, (RedisModuleKey *));
API(size_t, ValueLength, (RedisModuleKey *));
API(const char *, StringPtrLen, (const RedisModuleString *, size_t *));
API(char *, StringDMA, (RedisModuleKey *, size_t *, int));
API(int, StringSet, (RedisModuleKey *, RedisModuleString *));
API(RedisModuleString *, CreateString, (RedisModuleCtx *, const char *, size_t));
API(RedisModuleString *, CreateStringFromLongLong, (RedisModuleCtx *, long long));
API(void, FreeString, (RedisModuleCtx *, RedisModuleString *));
API(int, StreamAdd, (RedisModuleKey *, int, RedisModuleStreamID *, RedisModuleString **, int64_t));
API(int, HashSet, (RedisModuleKey *, int, ...));
API(long long, GetExpire, (RedisModuleKey *));
API(int, SetExpire, (RedisModuleKey *, long long));
API(long long, Milliseconds, (void));
API(int, ReplyWithError, (RedisModuleCtx *, const char *));
API(int, ReplyWithLongLong, (RedisModuleCtx *, long long));
API(int, ReplyWithArray, (RedisModuleCtx *, long));
API(int, WrongArity, (RedisModuleCtx *));
API(int, Replicate, (RedisModuleCtx *, const char *, const char *, ...));
API(void *, Alloc, (size_t));
API(int, StreamDelete, (RedisModuleKey *, RedisModuleStreamID *));
API(int, HashGet, (RedisModuleKey *, int, ...));
API(void, Free, (void *));

/* The stream's and the status hash's field names, made once. */
static RedisModuleString *field_i, *field_e, *field_p, *field_c, *field_q, *field_a, *field_s, *field_k;

/* A decimal integer; 0 if the text is not one. Read by hand, not by strtoll: the module reads
   a dozen integers a message, and glibc's strtoll (locale and all) cost Redis about as much as
   the stream append itself. */
static int decimal(const char *p, size_t len, long long *out) {
    int negative = len > 0 && p[0] == '-';
    size_t i = negative ? 1 : 0;
    if (len == i || len - i > 18) return 0; /* at most 18 digits: no overflow to check */
    long long value = 0;
    for (; i < len; i++) {
        if (p[i] < '0' || p[i] > '9') return 0;
        value = value * 10 + (p[i] - '0');
    }
    *out = negative ? -value : value;
    return 1;
}

/* A decimal integer argument; 0 if it is not one. */
static int integer(const RedisModuleString *s, long long *out) {
    size_t len;
    const char *p = RedisModule_StringPtrLen(s, &len);
    return decimal(p, len, out);
}

/* The arguments after the settings: K[1..keys], A[1..arguments], 1-based as in the script. */
struct call {
    long long cap, slack, retention, keys, arguments, devices;
    RedisModuleString **K, **A;
};

static const char *parse(RedisModuleString **argv, int argc, struct call *c) {
    long long version, keep;
    if (argc < 7 || !integer(argv[1], &version)) return "ERR HERALD.APPEND: bad arguments";
    if (version != INTERFACE_VERSION) return "ERR HERALD.APPEND: interface version mismatch";
    if (!integer(argv[2], &c->cap) || !integer(argv[3], &c->slack) || !integer(argv[4], &c->retention) ||
        !integer(argv[5], &keep) || !integer(argv[6], &c->keys) || c->keys < 2 || c->keys > argc - 7)
        return "ERR HERALD.APPEND: bad arguments";
    c->K = argv + 7 - 1;
    c->A = argv + 7 + c->keys - 1;
    c->arguments = argc - 7 - c->keys;
    if (c->arguments < 4 || !integer(c->A[4], &c->devices) || c->devices < 1 || 2 * c->devices > c->keys ||
        c->arguments < 4 + 2 * c->devices)
        return "ERR HERALD.APPEND: bad arguments";
    return NULL;
}

/* The device's counter, or -1 when the script must decide (a counter of another type, or none
   where the previous schema left a queue: `<tag>:seq` exists). */
static long long counter(RedisModuleCtx *ctx, RedisModuleKey *key, RedisModuleString *name) {
    int type = RedisModule_KeyType(key);
    if (type == RM_KEYTYPE_EMPTY) {
        size_t len;
        const char *text = RedisModule_StringPtrLen(name, &len);
        if (len < 2) return -1;
        char old[512];
        if (len - 2 + 4 > sizeof old) return -1;
        memcpy(old, text, len - 2);
        memcpy(old + len - 2, ":seq", 4);
        RedisModuleString *oldName = RedisModule_CreateString(ctx, old, len - 2 + 4);
        RedisModuleKey *oldKey = RedisModule_OpenKey(ctx, oldName, RM_READ);
        int exists = RedisModule_KeyType(oldKey) != RM_KEYTYPE_EMPTY;
        RedisModule_CloseKey(oldKey);
        RedisModule_FreeString(ctx, oldName);
        return exists ? -1 : 0;
    }
    if (type != RM_KEYTYPE_STRING) return -1;
    size_t len;
    const char *text = RedisModule_StringDMA(key, &len, RM_READ);
    long long value;
    return text != NULL && decimal(text, len, &value) && value >= 0 ? value : -1;
}

static int append(RedisModuleCtx *ctx, RedisModuleString **argv, int argc) {
    if (RedisModule_IsKeysPositionRequest(ctx)) {
        long long keys;
        if (argc >= 7 && integer(argv[6], &keys) && keys >= 0 && keys <= argc - 7)
            for (int k = 0; k < keys; k++) RedisModule_KeyAtPos(ctx, 7 + k);
        return RM_OK;
    }
    if (argc < 7) return RedisModule_WrongArity(ctx);
    struct call c;
    const char *bad = parse(argv, argc, &c);
    if (bad) return RedisModule_ReplyWithError(ctx, bad);
    RedisModuleString **K = c.K, **A = c.A;
    long long devices = c.devices, n = c.arguments;

    /* Late when Redis's clock has passed the deadline (seconds, then milliseconds past them). */
    long long seconds, millis, now;
    if (!integer(A[1], &seconds) || !integer(A[2], &millis) || !integer(A[3], &now))
        return RedisModule_ReplyWithError(ctx, "ERR HERALD.APPEND: bad deadline");
    if (RedisModule_Milliseconds() > seconds * 1000 + millis) return RedisModule_ReplyWithError(ctx, "LATE");

    int fields = c.retention > 0 ? 5 : 4;
    long long first = 4 + 2 * devices + (c.retention > 0 ? devices : 0) + 1;
    long long *count = RedisModule_Alloc(sizeof(long long) * 4 * (size_t)(devices + 1));
    long long *length = count + devices + 1, *sequence = length + devices + 1, *need = sequence + devices + 1;
    RedisModuleKey **counters = RedisModule_Alloc(sizeof(RedisModuleKey *) * 2 * (size_t)(devices + 1));
    RedisModuleKey **queues = counters + devices + 1;
    for (long long d = 1; d <= devices; d++) counters[d] = queues[d] = NULL;
    const char *refusal = NULL;

    /* Read everything first: nothing is written unless all of the group goes through here. */
    for (long long d = 1; d <= devices && !refusal; d++) {
        if (!integer(A[4 + d], &count[d]) || count[d] < 1) { refusal = "ERR HERALD.APPEND: bad count"; break; }
        counters[d] = RedisModule_OpenKey(ctx, K[2 * d - 1], RM_READ | RM_WRITE);
        sequence[d] = counter(ctx, counters[d], K[2 * d - 1]);
        if (sequence[d] < 0) { refusal = "FALLBACK"; break; }
        queues[d] = RedisModule_OpenKey(ctx, K[2 * d], RM_READ | RM_WRITE);
        length[d] = (long long)RedisModule_ValueLength(queues[d]);
        need[d] = 0;
    }
    long long requests = 0;
    for (long long i = first; i <= n && !refusal; requests++) {
        long long k;
        if (!integer(A[i], &k) || k < 1 || i + fields * k > n) { refusal = "ERR HERALD.APPEND: bad request"; break; }
        for (long long m = 0; m < k && !refusal; m++) {
            long long at = i + 1 + fields * m, d, status = 0, expires;
            if (!integer(A[at], &d) || d < 1 || d > devices || !integer(A[at + 2], &expires) ||
                (fields == 5 && (!integer(A[at + 4], &status) || status < 0 || status > c.keys)))
                refusal = "ERR HERALD.APPEND: bad message";
            else
                need[d]++;
        }
        /* A request that would pass a cap: the script refuses it (after a sweep, perhaps). */
        for (long long d = 1; d <= devices && !refusal; d++)
            if (length[d] + need[d] > c.cap) refusal = "FALLBACK";
        i += 1 + fields * k;
    }
    if (!refusal && requests == 0) refusal = "ERR HERALD.APPEND: no request";
    if (refusal) {
        RedisModule_ReplyWithError(ctx, refusal);
        goto done;
    }

    for (long long d = 1; d <= devices; d++) {
        RedisModuleString *raised = RedisModule_CreateStringFromLongLong(ctx, sequence[d] + count[d]);
        RedisModule_StringSet(counters[d], raised);
        RedisModule_FreeString(ctx, raised);
        RedisModule_Replicate(ctx, "INCRBY", "ss", K[2 * d - 1], A[4 + d]);
    }
    RedisModule_ReplyWithArray(ctx, requests);
    for (long long i = first; i <= n;) {
        long long k;
        integer(A[i], &k);
        if (k > 1) RedisModule_ReplyWithArray(ctx, k);
        for (long long m = 0; m < k; m++) {
            long long at = i + 1 + fields * m, d, expires;
            integer(A[at], &d);
            integer(A[at + 2], &expires);
            long long s = ++sequence[d];
            RedisModuleStreamID id = {(uint64_t)s, 0};
            RedisModuleString *entry[6] = {field_i, A[at + 1], field_e, A[at + 2], field_p, A[at + 3]};
            if (RedisModule_StreamAdd(queues[d], 0, &id, entry, 3) != RM_OK) {
                /* The counter is behind the stream: as the script's XADD would, fail loudly. */
                RedisModule_ReplyWithError(ctx, "ERR HERALD.APPEND: the stream is ahead of its counter");
                continue;
            }
            RedisModule_Replicate(ctx, "XADD", "slssssss", K[2 * d], s, field_i, A[at + 1], field_e, A[at + 2], field_p, A[at + 3]);
            long long status = 0;
            if (fields == 5) integer(A[at + 4], &status);
            if (status > 0) {
                RedisModuleKey *hash = RedisModule_OpenKey(ctx, K[status], RM_READ | RM_WRITE);
                RedisModuleString *q = RedisModule_CreateStringFromLongLong(ctx, s);
                RedisModuleString *client = A[4 + 2 * devices + d];
                RedisModule_HashSet(hash, 0, field_c, client, field_q, q, field_a, A[3], field_e, A[at + 2], NULL);
                long long ttl = expires - now + c.retention + c.slack;
                if (ttl < 1) ttl = 1;
                RedisModule_SetExpire(hash, ttl);
                RedisModule_CloseKey(hash);
                RedisModule_Replicate(ctx, "HSET", "sssssssss", K[status], field_c, client, field_q, q, field_a, A[3], field_e, A[at + 2]);
                RedisModule_Replicate(ctx, "PEXPIREAT", "sl", K[status], RedisModule_Milliseconds() + ttl);
                RedisModule_FreeString(ctx, q);
            }
            RedisModule_ReplyWithLongLong(ctx, s);
        }
        i += 1 + fields * k;
    }
    /* The stream lives until its last message has expired, plus the slack: set outright on a
       stream that holds only this group's entries, else only lengthened (as PEXPIRE GT). */
    for (long long d = 1; d <= devices; d++) {
        long long ttl;
        if (!integer(A[4 + devices + d], &ttl) || ttl < 1) continue;
        long long current = RedisModule_GetExpire(queues[d]);
        if (length[d] == 0 || (current != RM_NO_EXPIRE && ttl > current)) {
            RedisModule_SetExpire(queues[d], ttl);
            RedisModule_Replicate(ctx, "PEXPIREAT", "sl", K[2 * d], RedisModule_Milliseconds() + ttl);
        }
    }
done:
    for (long long d = 1; d <= devices; d++) {
        if (counters[d]) RedisModule_CloseKey(counters[d]);
        if (queues[d]) RedisModule_CloseKey(queues[d]);
    }
    RedisModule_Free(counters);
    RedisModule_Free(count);
    return RM_OK;
}

/* Sets `field` of the hash `key` to `value` unless it has one (HSETNX); 1 if it set it. */
static int setIfAbsent(RedisModuleKey *key, RedisModuleString *field, RedisModuleString *value) {
    int exists = 0;
    if (RedisModule_KeyType(key) == RM_KEYTYPE_HASH) RedisModule_HashGet(key, RM_HASH_EXISTS, field, &exists, NULL);
    if (exists) return 0;
    RedisModule_HashSet(key, 0, field, value, NULL);
    return 1;
}

static int ack(RedisModuleCtx *ctx, RedisModuleString **argv, int argc) {
    if (RedisModule_IsKeysPositionRequest(ctx)) {
        long long keys;
        if (argc >= 6 && integer(argv[4], &keys) && keys >= 1 && keys <= argc - 5)
            for (int k = 0; k < keys; k++) RedisModule_KeyAtPos(ctx, 5 + k);
        return RM_OK;
    }
    if (argc < 6) return RedisModule_WrongArity(ctx);
    long long version, now, retention, keys;
    if (!integer(argv[1], &version)) return RedisModule_ReplyWithError(ctx, "ERR HERALD.ACK: bad arguments");
    if (version != INTERFACE_VERSION) return RedisModule_ReplyWithError(ctx, "ERR HERALD.ACK: interface version mismatch");
    if (!integer(argv[2], &now) || !integer(argv[3], &retention) || retention < 1 || !integer(argv[4], &keys) || keys < 1 ||
        keys > argc - 5 || (argc - 5 - keys) % 3 != 0)
        return RedisModule_ReplyWithError(ctx, "ERR HERALD.ACK: bad arguments");
    RedisModuleString **K = argv + 5 - 1, **A = argv + 5 + keys; /* K[1] is the stream */
    long long messages = (argc - 5 - keys) / 3;

    /* Check everything first: nothing is written unless all of it goes through here. */
    RedisModuleKey **opened = RedisModule_Alloc(sizeof(RedisModuleKey *) * (size_t)(keys + 1));
    RedisModuleString **deleted = RedisModule_Alloc(sizeof(RedisModuleString *) * (size_t)(messages + 1));
    for (long long k = 1; k <= keys; k++) opened[k] = NULL;
    const char *refusal = NULL;
    opened[1] = RedisModule_OpenKey(ctx, K[1], RM_READ | RM_WRITE);
    int type = RedisModule_KeyType(opened[1]);
    if (type != RM_KEYTYPE_EMPTY && type != RM_KEYTYPE_STREAM) refusal = "FALLBACK";
    for (long long m = 0; m < messages && !refusal; m++) {
        long long sequence, status, sent;
        if (!integer(A[3 * m], &sequence) || sequence < 1 || !integer(A[3 * m + 1], &status) || status < 0 || status == 1 ||
            status > keys || !integer(A[3 * m + 2], &sent) || sent < 0) {
            refusal = "ERR HERALD.ACK: bad message";
            break;
        }
        if (status == 0 || opened[status]) continue;
        opened[status] = RedisModule_OpenKey(ctx, K[status], RM_READ | RM_WRITE);
        type = RedisModule_KeyType(opened[status]);
        if (type != RM_KEYTYPE_EMPTY && type != RM_KEYTYPE_HASH) refusal = "FALLBACK";
    }
    if (refusal) {
        RedisModule_ReplyWithError(ctx, refusal);
        goto done;
    }

    /* The status first, then the delete: cut between them, the message says acked and is
       delivered again, never the other way round (as the node's plain commands are ordered). */
    for (long long m = 0; m < messages; m++) {
        long long status, sent;
        integer(A[3 * m + 1], &status);
        integer(A[3 * m + 2], &sent);
        if (status == 0) continue;
        RedisModuleKey *key = opened[status];
        int setSent = sent > 0 && setIfAbsent(key, field_s, A[3 * m + 2]);
        int setAcked = setIfAbsent(key, field_k, argv[2]);
        if (setSent && setAcked)
            RedisModule_Replicate(ctx, "HSET", "sssss", K[status], field_s, A[3 * m + 2], field_k, argv[2]);
        else if (setSent || setAcked)
            RedisModule_Replicate(ctx, "HSET", "sss", K[status], setSent ? field_s : field_k, setSent ? A[3 * m + 2] : argv[2]);
        RedisModule_SetExpire(key, retention);
        RedisModule_Replicate(ctx, "PEXPIREAT", "sl", K[status], RedisModule_Milliseconds() + retention);
    }
    long long count = 0;
    if (RedisModule_KeyType(opened[1]) == RM_KEYTYPE_STREAM) {
        for (long long m = 0; m < messages; m++) {
            long long sequence;
            integer(A[3 * m], &sequence);
            RedisModuleStreamID id = {(uint64_t)sequence, 0};
            if (RedisModule_StreamDelete(opened[1], &id) == RM_OK) deleted[count++] = A[3 * m];
        }
        /* An entry id of digits alone is `<digits>-0` to XDEL. */
        if (count > 0) RedisModule_Replicate(ctx, "XDEL", "sv", K[1], deleted, (size_t)count);
    }
    RedisModule_ReplyWithLongLong(ctx, count);
done:
    for (long long k = 1; k <= keys; k++)
        if (opened[k]) RedisModule_CloseKey(opened[k]);
    RedisModule_Free(deleted);
    RedisModule_Free(opened);
    return RM_OK;
}

#define GET(name) \
    if (RedisModule_GetApi("RedisModule_" #name, (void *)&RedisModule_##name) != RM_OK) return RM_ERR

int RedisModule_OnLoad(RedisModuleCtx *ctx, RedisModuleString **argv, int argc) {
    (void)argv;
    (void)argc;
    /* The module API's first field is the function that hands out the others. */
    RedisModule_GetApi = (int (*)(const char *, void *))(unsigned long)((void **)ctx)[0];
    GET(SetModuleAttribs); GET(CreateCommand); GET(IsKeysPositionRequest); GET(KeyAtPos);
    GET(OpenKey); GET(CloseKey); GET(KeyType); GET(ValueLength); GET(StringPtrLen); GET(StringDMA);
    GET(StringSet); GET(CreateString); GET(CreateStringFromLongLong); GET(FreeString); GET(StreamAdd);
    GET(HashSet); GET(GetExpire); GET(SetExpire); GET(Milliseconds); GET(ReplyWithError);
    GET(ReplyWithLongLong); GET(ReplyWithArray); GET(WrongArity); GET(Replicate); GET(Alloc); GET(Free);
    GET(StreamDelete); GET(HashGet);
    RedisModule_SetModuleAttribs(ctx, "herald", INTERFACE_VERSION, RM_APIVER_1);
    field_i = RedisModule_CreateString(NULL, "i", 1);
    field_e = RedisModule_CreateString(NULL, "e", 1);
    field_p = RedisModule_CreateString(NULL, "p", 1);
    field_c = RedisModule_CreateString(NULL, "c", 1);
    field_q = RedisModule_CreateString(NULL, "q", 1);
    field_a = RedisModule_CreateString(NULL, "a", 1);
    field_s = RedisModule_CreateString(NULL, "s", 1);
    field_k = RedisModule_CreateString(NULL, "k", 1);
    if (RedisModule_CreateCommand(ctx, "herald.append", append, "write deny-oom getkeys-api", 0, 0, 0) != RM_OK) return RM_ERR;
    return RedisModule_CreateCommand(ctx, "herald.ack", ack, "write getkeys-api", 0, 0, 0);
}
