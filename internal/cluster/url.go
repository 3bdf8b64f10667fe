package cluster

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/redis/rueidis"
)

// The bus's Redis, as Options.URL names it:
//
//	redis://[:password@]host:port[/db]         one Redis (rediss:// for TLS)
//	redis-sentinel://[:password@]s1:26379,s2:26379,s3:26379/<master>[/db]
//	                                           Redis under Sentinel (rediss-sentinel:// for TLS)
//
// Under Sentinel the bus asks the sentinels which server is the master of
// <master>, and follows a failover: Sentinel announces the promotion
// (+switch-master) and the bus moves to the new master; it also asks
// again every sentinelRefresh, in case it missed the announcement. The
// password is the master's (and its replicas'); ?sentinel_password= is
// the sentinels' own, if they require one. One URL carries all a
// Sentinel client needs, so that one flag (or variable) does; rueidis's
// own form (redis://s1:26379?addr=s2:26379&master_set=<master>) is
// accepted as well.

// sentinelRefresh is how often the bus asks the sentinels for the master
// besides listening for their announcements.
const sentinelRefresh = 5 * time.Second

// redisOptions reads a bus URL into rueidis's options.
func redisOptions(raw string) (rueidis.ClientOption, error) {
	scheme, rest, ok := strings.Cut(raw, "://")
	if !ok {
		return rueidis.ClientOption{}, errors.New("not a URL: want redis://host:port or redis-sentinel://host:port,.../master")
	}
	switch scheme {
	case "redis-sentinel", "rediss-sentinel":
		return sentinelOptions(strings.TrimSuffix(scheme, "-sentinel"), rest)
	}
	opt, err := rueidis.ParseURL(raw)
	if err == nil && opt.Sentinel.MasterSet != "" {
		opt.Sentinel.TLSConfig = opt.TLSConfig
		opt.Sentinel.TopologyRefreshInterval = sentinelRefresh
	}
	return opt, err
}

// sentinelOptions reads what follows redis-sentinel:// (base "redis") or
// rediss-sentinel:// ("rediss").
func sentinelOptions(base, rest string) (rueidis.ClientOption, error) {
	var opt rueidis.ClientOption
	authority, path, _ := strings.Cut(rest, "/")
	path, rawQuery, _ := strings.Cut(path, "?")
	if at := strings.LastIndex(authority, "@"); at >= 0 {
		u, err := url.Parse(base + "://" + authority[:at+1] + "x")
		if err != nil || u.User == nil {
			return opt, errors.New("malformed user information")
		}
		opt.Username = u.User.Username()
		opt.Password, _ = u.User.Password()
		authority = authority[at+1:]
	}
	for _, hp := range strings.Split(authority, ",") {
		host, port, err := net.SplitHostPort(strings.TrimSpace(hp))
		if err != nil || host == "" {
			return opt, fmt.Errorf("sentinel address %q: want host:port", hp)
		}
		if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
			return opt, fmt.Errorf("sentinel address %q: bad port", hp)
		}
		opt.InitAddress = append(opt.InitAddress, net.JoinHostPort(host, port))
	}
	master, db, _ := strings.Cut(path, "/")
	if master == "" {
		return opt, errors.New("no master name: redis-sentinel://host:port,.../<master>")
	}
	opt.Sentinel.MasterSet = master
	if db != "" {
		n, err := strconv.Atoi(db)
		if err != nil || n < 0 {
			return opt, fmt.Errorf("bad database number %q", db)
		}
		opt.SelectDB = n
	}
	q, err := url.ParseQuery(rawQuery)
	if err != nil {
		return opt, fmt.Errorf("malformed query: %v", err)
	}
	for name := range q {
		if name != "sentinel_password" {
			return opt, fmt.Errorf("unknown parameter %q (only sentinel_password)", name)
		}
	}
	opt.Sentinel.Password = q.Get("sentinel_password")
	if base == "rediss" {
		opt.TLSConfig = &tls.Config{MinVersion: tls.VersionTLS12}
		opt.Sentinel.TLSConfig = opt.TLSConfig
	}
	opt.Sentinel.TopologyRefreshInterval = sentinelRefresh
	return opt, nil
}
