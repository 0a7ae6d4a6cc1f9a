/* json.c - typed fields of request bodies (cJSON), with errors naming the
 * field; small shared helpers of the dialects. */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "http.h"

cJSON *vl2h_body_object(struct vl2h_req *rq)
{
    const char *end = NULL;
    cJSON *o;

    if (!rq->body || rq->body_len == 0) {
        (void) vl2h_reply_error(rq, 400, "invalid_json", "vl2-http: the request has no body "
                                "(a JSON object is expected)");
        return NULL;
    }
    o = cJSON_ParseWithLengthOpts(rq->body, rq->body_len, &end, 0);
    if (!o) {
        size_t at = end && end >= rq->body ? (size_t) (end - rq->body) : 0;

        (void) vl2h_reply_error(rq, 400, "invalid_json", "vl2-http: the body is not valid "
                                "JSON (at byte %zu)", at);
        return NULL;
    }
    if (!cJSON_IsObject(o)) {
        cJSON_Delete(o);
        (void) vl2h_reply_error(rq, 400, "invalid_json", "vl2-http: the body is JSON but not "
                                "an object");
        return NULL;
    }
    return o;
}

static const cJSON *field(const cJSON *o, const char *name)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, name);

    return v && !cJSON_IsNull(v) ? v : NULL;
}

int vl2h_get_number(const cJSON *o, const char *name, double min, double max, double *ret,
                    struct vl2_err *err)
{
    const cJSON *v = field(o, name);

    if (!v)
        return 0;
    if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble))
        return vl2_err_set(err, VL2_EINVAL, "vl2-http: '%s': expected a number", name);
    if (v->valuedouble < min || v->valuedouble > max)
        return vl2_err_set(err, VL2_EINVAL, "vl2-http: '%s': %g is outside [%g, %g]", name,
                           v->valuedouble, min, max);
    *ret = v->valuedouble;
    return 1;
}

int vl2h_get_int(const cJSON *o, const char *name, double min, double max, int64_t *ret,
                 struct vl2_err *err)
{
    double d = 0;
    int r = vl2h_get_number(o, name, min, max, &d, err);

    if (r <= 0)
        return r;
    if (d != floor(d))
        return vl2_err_set(err, VL2_EINVAL, "vl2-http: '%s': expected an integer, got %g",
                           name, d);
    *ret = (int64_t) d;
    return 1;
}

int vl2h_get_bool(const cJSON *o, const char *name, bool *ret, struct vl2_err *err)
{
    const cJSON *v = field(o, name);

    if (!v)
        return 0;
    if (!cJSON_IsBool(v))
        return vl2_err_set(err, VL2_EINVAL, "vl2-http: '%s': expected true or false", name);
    *ret = cJSON_IsTrue(v);
    return 1;
}

int vl2h_get_string(const cJSON *o, const char *name, const char **ret, struct vl2_err *err)
{
    const cJSON *v = field(o, name);

    if (!v)
        return 0;
    if (!cJSON_IsString(v))
        return vl2_err_set(err, VL2_EINVAL, "vl2-http: '%s': expected a string", name);
    *ret = v->valuestring;
    return 1;
}

int vl2h_get_stops(const cJSON *o, const char *name, struct vl2h_params *p,
                   struct vl2_err *err)
{
    const cJSON *v = field(o, name), *e;
    int r;

    if (!v)
        return 0;
    if (cJSON_IsString(v))
        return v->valuestring[0] ? vl2h_params_add_stop(p, v->valuestring, err) : 0;
    if (!cJSON_IsArray(v))
        return vl2_err_set(err, VL2_EINVAL, "vl2-http: '%s': expected a string or an array "
                           "of strings", name);
    cJSON_ArrayForEach(e, v) {
        if (!cJSON_IsString(e))
            return vl2_err_set(err, VL2_EINVAL, "vl2-http: '%s': expected an array of strings",
                               name);
        if (!e->valuestring[0])
            continue;
        r = vl2h_params_add_stop(p, e->valuestring, err);
        if (r < 0)
            return r;
    }
    return 0;
}

void vl2h_rfc3339(double t, char *buf, size_t size)
{
    time_t s = (time_t) t;
    long ns = (long) ((t - (double) s) * 1e9);
    struct tm tm;
    char day[32];

    if (ns < 0)
        ns = 0;
    if (ns > 999999999)
        ns = 999999999;
    gmtime_r(&s, &tm);
    strftime(day, sizeof(day), "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(buf, size, "%s.%09ldZ", day, ns);
}

float vl2h_penalty_map(double frequency_penalty, double presence_penalty)
{
    return (float) exp2((frequency_penalty + presence_penalty) / 4.0);
}
