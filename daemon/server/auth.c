/* auth.c - who is on the other end of a connection, and may they talk to us.
 *
 * The kernel reports the peer's uid, gid and pid at connect time
 * (SO_PEERCRED) and its supplementary groups (SO_PEERGROUPS, Linux 4.13+).
 * Where SO_PEERGROUPS is missing, the user database stands in for it. */
#include <errno.h>
#include <grp.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "server-impl.h"

#ifndef SO_PEERGROUPS
#define SO_PEERGROUPS 59
#endif

static void groups_from_passwd(struct vl2_peer *p)
{
    struct passwd pw, *res = NULL;
    char buf[4096];
    int n = (int) (sizeof(p->groups) / sizeof(p->groups[0]));

    if (getpwuid_r(p->uid, &pw, buf, sizeof(buf), &res) != 0 || !res)
        return;
    if (getgrouplist(res->pw_name, p->gid, p->groups, &n) < 0)
        n = (int) (sizeof(p->groups) / sizeof(p->groups[0]));  /* the first ones */
    p->n_groups = n > 0 ? (size_t) n : 0;
}

int vl2__auth_peer(int fd, struct vl2_peer *ret, struct vl2_err *err)
{
    struct ucred cr;
    socklen_t len = sizeof(cr);
    struct vl2_peer p;

    memset(&p, 0, sizeof(p));
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &len) < 0 || len != sizeof(cr))
        return vl2_err_set(err, VL2_EPERM, "server: cannot read peer credentials: %s",
                           strerror(errno));
    p.pid = cr.pid;
    p.uid = cr.uid;
    p.gid = cr.gid;
    len = sizeof(p.groups);
    if (getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, p.groups, &len) == 0)
        p.n_groups = len / sizeof(gid_t);
    else
        groups_from_passwd(&p);
    *ret = p;
    return 0;
}

int vl2__auth_check(const struct vl2_server_opts *o, const struct vl2_peer *peer,
                    struct vl2_err *err)
{
    size_t i, j;

    for (i = 0; i < o->n_allow_uids; i++)
        if (peer->uid == o->allow_uids[i])
            return 0;
    for (i = 0; i < o->n_allow_gids; i++) {
        if (peer->gid == o->allow_gids[i])
            return 0;
        for (j = 0; j < peer->n_groups; j++)
            if (peer->groups[j] == o->allow_gids[i])
                return 0;
    }
    {
        char allowed[256];
        size_t off = 0;

        allowed[0] = '\0';
        for (i = 0; i < o->n_allow_uids && off < sizeof(allowed); i++)
            off += (size_t) snprintf(allowed + off, sizeof(allowed) - off, "%suid %u",
                                     off ? ", " : "", (unsigned) o->allow_uids[i]);
        for (i = 0; i < o->n_allow_gids && off < sizeof(allowed); i++)
            off += (size_t) snprintf(allowed + off, sizeof(allowed) - off, "%sgroup %u",
                                     off ? ", " : "", (unsigned) o->allow_gids[i]);
        return vl2_err_set(err, VL2_EPERM,
                           "server: permission denied: uid %u (gid %u) may not use this "
                           "daemon; allowed: %s", (unsigned) peer->uid, (unsigned) peer->gid,
                           allowed[0] ? allowed : "nobody");
    }
}

static bool peer_in_group(const struct vl2_peer *peer, gid_t g)
{
    size_t j;

    if (peer->gid == g)
        return true;
    for (j = 0; j < peer->n_groups; j++)
        if (peer->groups[j] == g)
            return true;
    return false;
}

bool vl2__auth_privileged(const struct vl2_peer *peer)
{
    return peer->uid == 0 || peer->uid == geteuid();
}

bool vl2__auth_admin(const struct vl2_server_opts *o, const struct vl2_peer *peer)
{
    size_t i;

    if (vl2__auth_privileged(peer))
        return true;
    for (i = 0; i < o->n_admin_gids; i++)
        if (peer_in_group(peer, o->admin_gids[i]))
            return true;
    return false;
}
