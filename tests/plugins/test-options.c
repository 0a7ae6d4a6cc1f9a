/* test-options.c - plugins/vl2-options.h, the one grammar of backend
 * options: items, empty items, keys and values at and past their limits,
 * control bytes, a key given twice (the last value wins), and the readers
 * of values (integers, booleans, words) with their messages. */
#include <stdio.h>
#include <string.h>

#include "../common/check.h"
#include "vl2-options.h"

/* Parse @s completely; returns the number of items, or the error code.
 * Keys "n" are read as integers 0..100 into *@n (the last one stays). */
static int parse_all(const char *s, long *n, struct vl2_err *err)
{
    const char *pos = s;
    struct vl2_opt o;
    int r, items = 0;

    memset(err, 0, sizeof(*err));
    while ((r = vl2_opt_next(&pos, &o, "test", err)) > 0) {
        items++;
        if (!strcmp(o.key, "n") && (r = vl2_opt_long(&o, 0, 100, n, "test", err)) < 0)
            return r;
    }
    return r < 0 ? r : items;
}

static void expect_error(const char *s, const char *needle)
{
    struct vl2_err err;
    long n = -1;
    int r = parse_all(s, &n, &err);

    CHECK_MSG(r == VL2_EINVAL && err.code == VL2_EINVAL, "'%s' gave %d", s, r);
    CHECK_MSG(strstr(err.msg, needle) != NULL, "'%s': message '%s' lacks '%s'", s, err.msg,
              needle);
    CHECK_MSG(strncmp(err.msg, "test: ", 6) == 0, "'%s': message '%s' not prefixed", s,
              err.msg);
}

static void test_items(void)
{
    const char *pos;
    struct vl2_opt o;
    struct vl2_err err = { 0 };
    long n = -1;

    CHECK_EQ_INT(parse_all(NULL, &n, &err), 0);
    CHECK_EQ_INT(parse_all("", &n, &err), 0);
    CHECK_EQ_INT(parse_all("a=1", &n, &err), 1);
    CHECK_EQ_INT(parse_all("a=1,b_2=x y,c=/p=q", &n, &err), 3);
    /* the pieces of each item, and the position after it */
    pos = "isa=avx2,path=/a=b";
    CHECK(vl2_opt_next(&pos, &o, "test", &err) == 1);
    CHECK(!strcmp(o.key, "isa") && !strcmp(o.val, "avx2"));
    CHECK(!strcmp(pos, "path=/a=b"));
    CHECK(vl2_opt_next(&pos, &o, "test", &err) == 1);
    CHECK(!strcmp(o.key, "path") && !strcmp(o.val, "/a=b"));  /* the first '=' splits */
    CHECK(vl2_opt_next(&pos, &o, "test", &err) == 0);
    CHECK(vl2_opt_next(&pos, &o, "test", &err) == 0);          /* and stays at the end */
}

static void test_bad_items(void)
{
    char s[400];

    expect_error(",a=1", "empty item");
    expect_error("a=1,,b=2", "empty item");
    expect_error("a=1,", "empty item");
    expect_error(",", "empty item");
    expect_error("abc", "'abc': expected key=value");
    expect_error("a=1,abc", "'abc': expected key=value");
    expect_error("=1", "empty key");
    expect_error("a=", "'a': empty value");
    expect_error("a=,b=1", "'a': empty value");
    expect_error("Isa=avx2", "only a-z, 0-9 and _");
    expect_error("a-b=1", "only a-z, 0-9 and _");
    expect_error(" a=1", "only a-z, 0-9 and _");
    expect_error("a=1\n", "control byte");
    expect_error("a=x\ty", "control byte");
    expect_error("a=\x7f", "control byte");
    /* a key of 31 bytes is the longest */
    memset(s, 'k', 31);
    strcpy(s + 31, "=1");
    {
        struct vl2_err err;
        long n;
        CHECK_EQ_INT(parse_all(s, &n, &err), 1);
    }
    memset(s, 'k', 32);
    strcpy(s + 32, "=1");
    expect_error(s, "longer than 31 bytes");
    /* a value of 255 bytes is the longest */
    strcpy(s, "v=");
    memset(s + 2, 'x', 255);
    s[257] = '\0';
    {
        struct vl2_err err;
        long n;
        CHECK_EQ_INT(parse_all(s, &n, &err), 1);
    }
    s[257] = 'x';
    s[258] = '\0';
    expect_error(s, "value longer than 255 bytes");
}

static void test_last_wins(void)
{
    struct vl2_err err;
    long n = -1;

    CHECK_EQ_INT(parse_all("n=1,n=2", &n, &err), 2);
    CHECK_EQ_INT(n, 2);
    CHECK_EQ_INT(parse_all("n=7,x=1,n=3", &n, &err), 3);
    CHECK_EQ_INT(n, 3);
    /* every item is still read: a bad one is an error even when a later one
     * would replace it */
    CHECK_EQ_INT(parse_all("n=oops,n=2", &n, &err), VL2_EINVAL);
}

static void test_numbers(void)
{
    static const char *const bad[] = { "12x", "x12", " 5", "5 ", "0x10", "1e3", "-", "+",
                                       "101", "-1", "99999999999999999999", "1.5" };
    static const char *const good[] = { "0", "100", "+7", "007" };
    static const long good_v[] = { 0, 100, 7, 7 };
    struct vl2_err err;
    struct vl2_opt o = { .key = "n" };
    long v;

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        snprintf(o.val, sizeof(o.val), "%s", bad[i]);
        memset(&err, 0, sizeof(err));
        v = 4242;
        CHECK_MSG(vl2_opt_long(&o, 0, 100, &v, "cpu", &err) == VL2_EINVAL, "'%s'", bad[i]);
        CHECK_EQ_INT(v, 4242);  /* untouched */
        {
            char want[300];
            snprintf(want, sizeof(want), "cpu: option n '%s': expected an integer 0..100",
                     bad[i]);
            CHECK_MSG(!strcmp(err.msg, want), "'%s'", err.msg);
        }
    }
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        snprintf(o.val, sizeof(o.val), "%s", good[i]);
        CHECK_MSG(vl2_opt_long(&o, 0, 100, &v, "cpu", &err) == 0 && v == good_v[i], "'%s'",
                  good[i]);
    }
    snprintf(o.val, sizeof(o.val), "-40");
    CHECK(vl2_opt_long(&o, -50, 0, &v, "cpu", &err) == 0 && v == -40);
}

static void test_bool_choice_unknown(void)
{
    static const char *const words[] = { "auto", "absorbed", "expanded" };
    struct vl2_err err = { 0 };
    struct vl2_opt o = { .key = "flag" };
    int v;

    for (int i = 0; i < 6; i++) {
        static const char *const in[] = { "1", "true", "on", "0", "false", "off" };
        snprintf(o.val, sizeof(o.val), "%s", in[i]);
        CHECK(vl2_opt_bool(&o, &v, "cuda", &err) == 0 && v == (i < 3));
    }
    snprintf(o.val, sizeof(o.val), "yes");
    CHECK(vl2_opt_bool(&o, &v, "cuda", &err) == VL2_EINVAL);
    CHECK(!strcmp(err.msg, "cuda: option flag 'yes': expected 0 or 1"));

    snprintf(o.key, sizeof(o.key), "mla");
    snprintf(o.val, sizeof(o.val), "expanded");
    CHECK(vl2_opt_choice(&o, words, 3, &v, "cpu", &err) == 0 && v == 2);
    snprintf(o.val, sizeof(o.val), "Expanded");
    CHECK(vl2_opt_choice(&o, words, 3, &v, "cpu", &err) == VL2_EINVAL);
    CHECK_MSG(!strcmp(err.msg, "cpu: option mla 'Expanded': expected one of auto, absorbed, "
                               "expanded"), "%s", err.msg);

    snprintf(o.key, sizeof(o.key), "nosuch");
    CHECK(vl2_opt_unknown(&o, "cpu", &err) == VL2_EINVAL);
    CHECK(!strcmp(err.msg, "cpu: unknown option 'nosuch'"));
}

int main(void)
{
    RUN(test_items);
    RUN(test_bad_items);
    RUN(test_last_wins);
    RUN(test_numbers);
    RUN(test_bool_choice_unknown);
    return check_report("options");
}
