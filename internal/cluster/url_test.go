package cluster

import (
	"strings"
	"testing"
)

func TestRedisOptions(t *testing.T) {
	opt, err := redisOptions("redis-sentinel://:s3cret@10.0.0.1:26379, 10.0.0.2:26380,[::1]:26381/mymaster/2?sentinel_password=sp")
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(opt.InitAddress, " "); got != "10.0.0.1:26379 10.0.0.2:26380 [::1]:26381" {
		t.Errorf("sentinels %q", got)
	}
	if opt.Sentinel.MasterSet != "mymaster" || opt.Password != "s3cret" || opt.Sentinel.Password != "sp" || opt.SelectDB != 2 || opt.TLSConfig != nil {
		t.Errorf("options %+v", opt)
	}
	if opt.Sentinel.TopologyRefreshInterval != sentinelRefresh {
		t.Error("the bus does not ask the sentinels again for the master")
	}
	opt, err = redisOptions("rediss-sentinel://a:1/m")
	if err != nil || opt.TLSConfig == nil || opt.Sentinel.TLSConfig == nil {
		t.Errorf("rediss-sentinel: TLS to the master %v and to the sentinels %v (%v)", opt.TLSConfig, opt.Sentinel.TLSConfig, err)
	}
	opt, err = redisOptions("redis://a:26379?addr=b:26379&master_set=m")
	if err != nil || opt.Sentinel.MasterSet != "m" || len(opt.InitAddress) != 2 || opt.Sentinel.TopologyRefreshInterval == 0 {
		t.Errorf("rueidis's own form: %+v, %v", opt, err)
	}
	if opt, err := redisOptions("redis://:pw@h:6379/1"); err != nil || opt.Sentinel.MasterSet != "" || opt.Password != "pw" {
		t.Errorf("one Redis: %+v, %v", opt, err)
	}
	for _, bad := range []string{
		"redis-sentinel://a:1",        // no master
		"redis-sentinel://a/m",        // no port
		"redis-sentinel://a:0/m",      // bad port
		"redis-sentinel://a:1,/m",     // empty address
		"redis-sentinel://a:1/m/x",    // bad db
		"redis-sentinel://a:1/m?db=1", // unknown parameter
		"sentinel://a:1/m",            // unknown scheme
		"a:1",                         // no scheme
	} {
		if _, err := redisOptions(bad); err == nil {
			t.Errorf("%s: accepted", bad)
		}
	}
}
