// Command goneafterready is a new binary that fails during a binary
// upgrade's hand-over, for TestUpgradeThatFailsDuringTheHandOver: it takes
// the listeners, says it is ready (in the upgrade link's framing: a 4-byte
// big-endian length, then the JSON record), but has shut its end of the
// link for reading first, so that everything the old process then sends
// fails, as to a process that died. It exits after a while.
package main

import (
	"encoding/binary"
	"net"
	"os"
	"strconv"
	"syscall"
	"time"
)

func main() {
	fd, err := strconv.Atoi(os.Getenv("WS2API_UPGRADE_FD"))
	if err != nil {
		os.Exit(3)
	}
	f := os.NewFile(uintptr(fd), "upgrade socket")
	c, err := net.FileConn(f)
	if err != nil {
		os.Exit(3)
	}
	uc := c.(*net.UnixConn)
	buf, oob := make([]byte, 128), make([]byte, syscall.CmsgSpace(2*4))
	if _, _, _, _, err := uc.ReadMsgUnix(buf, oob); err != nil {
		os.Exit(3)
	}
	_ = uc.CloseRead()
	body := []byte(`{"t":"ready"}`)
	msg := binary.BigEndian.AppendUint32(nil, uint32(len(body)))
	if _, err := uc.Write(append(msg, body...)); err != nil {
		os.Exit(3)
	}
	time.Sleep(3 * time.Second)
	os.Exit(1)
}
