// Package redistest starts real redis-server processes for tests: single
// servers (TCP and optionally a unix socket), small clusters and a sentinel
// setup. Every process listens on loopback only, runs without persistence,
// is killed in tb.Cleanup and dies with the test process (Pdeathsig on
// Linux). The server log is printed via tb.Log only when the test failed.
package redistest

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

const (
	// startTimeout bounds how long one start attempt waits for PING.
	startTimeout = 10 * time.Second
	// startAttempts is how often a start is retried after a bind failure.
	startAttempts = 5
	// maxLogBytes is how much of the end of a server log is printed on failure.
	maxLogBytes = 64 << 10
)

// Options configures a server started by StartWith.
type Options struct {
	// Args are extra redis-server arguments, e.g. {"--maxmemory", "10mb"}.
	Args []string
	// Unix makes the server also listen on a short unix socket path (see
	// SocketPath); Client then connects over the socket instead of TCP.
	Unix bool
	// TLS, when set, makes the server also listen with TLS on a second loopback port (see
	// TLSAddr and tls.go). Plain servers and cluster nodes (StartClusterWith), not sentinels.
	TLS *TLSOptions
}

// kind says what sort of redis-server process a Server is.
type kind int

const (
	kindPlain kind = iota
	kindCluster
	kindSentinel
)

// Server is one redis-server process started for a test. Its methods are
// safe for concurrent use.
type Server struct {
	bin     string
	dir     string
	logPath string
	sock    string
	opts    Options
	kind    kind
	// sentinel configuration, used when kind == kindSentinel.
	monitorPort int
	certs       *Certs // the TLS port's certificates, nil without Options.TLS

	mu      sync.Mutex
	port    int
	busPort int
	tlsPort int
	cmd     *exec.Cmd
	done    chan struct{} // closed when cmd has exited
	paused  bool
}

// redisServerPath returns the redis-server binary, or skips tb (fails it
// when the CI environment variable is non-empty) when it is missing.
func redisServerPath(tb testing.TB) string {
	tb.Helper()
	p, err := exec.LookPath("redis-server")
	if err != nil {
		const msg = "redistest: redis-server not found; install it with apt-get install redis-server"
		if os.Getenv("CI") != "" {
			tb.Fatal(msg)
		}
		tb.Skip(msg)
	}
	return p
}

// Start starts a redis-server on a free loopback port and waits until it
// answers PING. It is StartWith(tb, Options{}). It skips tb when
// redis-server is not installed (fails it when CI is set) and fails tb when
// the server does not come up.
func Start(tb testing.TB) *Server {
	tb.Helper()
	return StartWith(tb, Options{})
}

// StartWith starts a redis-server configured by o on a free loopback port
// (with `--save "" --appendonly no`, a data directory and log file under
// tb.TempDir()) and waits until it answers PING. The process is killed in
// tb.Cleanup, which also prints the server log when the test failed. It
// skips tb when redis-server is not installed (fails it when CI is set) and
// fails tb when the server does not come up.
func StartWith(tb testing.TB, o Options) *Server {
	tb.Helper()
	return startServer(tb, o, kindPlain, 0)
}

func startServer(tb testing.TB, o Options, k kind, monitorPort int) *Server {
	tb.Helper()
	s := &Server{
		bin:         redisServerPath(tb),
		dir:         tb.TempDir(),
		opts:        o,
		kind:        k,
		monitorPort: monitorPort,
	}
	s.logPath = filepath.Join(s.dir, "redis.log")
	if o.TLS != nil {
		if s.certs = o.TLS.Certs; s.certs == nil {
			s.certs = NewCerts(tb)
		}
	}
	if o.Unix {
		// tb.TempDir paths can be too long for sun_path (~108 bytes).
		d, err := os.MkdirTemp("", "rt")
		if err != nil {
			tb.Fatalf("redistest: MkdirTemp: %v", err)
		}
		tb.Cleanup(func() { os.RemoveAll(d) })
		s.sock = filepath.Join(d, "r.sock")
	}
	tb.Cleanup(func() {
		s.stop()
		if tb.Failed() {
			tb.Logf("redistest: log of redis-server %s (%s):\n%s", s.Addr(), s.logPath, s.tailLog())
		}
	})
	s.start(tb, true)
	return s
}

// Addr returns the server's TCP address, "127.0.0.1:PORT".
func (s *Server) Addr() string {
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(s.Port()))
}

// Port returns the server's TCP port.
func (s *Server) Port() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.port
}

// BusPort returns the cluster bus port of a cluster node, 0 otherwise.
func (s *Server) BusPort() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.busPort
}

// SocketPath returns the unix socket path, "" unless Options.Unix was set.
func (s *Server) SocketPath() string { return s.sock }

// LogPath returns the path of the server's log file.
func (s *Server) LogPath() string { return s.logPath }

// PID returns the process id of the running server, 0 when it is not running.
func (s *Server) PID() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil || s.cmd.Process == nil || exited(s.done) {
		return 0
	}
	return s.cmd.Process.Pid
}

// Options returns a go-redis Options value for this server: over the unix
// socket when Options.Unix was set, over TCP otherwise.
func (s *Server) Options() *redis.Options {
	if s.sock != "" {
		return &redis.Options{Network: "unix", Addr: s.sock}
	}
	return &redis.Options{Addr: s.Addr()}
}

// Client returns a new go-redis client for this server (over the unix socket
// when Options.Unix was set), closed in tb.Cleanup.
func (s *Server) Client(tb testing.TB) *redis.Client {
	tb.Helper()
	c := redis.NewClient(s.Options())
	tb.Cleanup(func() { c.Close() })
	return c
}

// Kill sends SIGKILL to the server and waits for the process to exit. It
// does nothing when the server is not running and fails tb when the
// process does not exit within a few seconds.
func (s *Server) Kill(tb testing.TB) {
	tb.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.killLocked(); err != nil {
		tb.Fatalf("redistest: Kill %s: %v", s.addrLocked(), err)
	}
}

// Restart starts the server again on the same port (and socket) and waits
// until it answers PING; it kills the process first if it is still running.
// Data is lost unless the server itself keeps it (cluster nodes keep their
// nodes.conf). It fails tb when the server does not come up.
func (s *Server) Restart(tb testing.TB) {
	tb.Helper()
	s.mu.Lock()
	err := s.killLocked()
	s.mu.Unlock()
	if err != nil {
		tb.Fatalf("redistest: Restart %s: %v", s.Addr(), err)
	}
	s.start(tb, false)
}

// Pause sends SIGSTOP to the server and waits until the process is stopped.
// It fails tb when the server is not running or does not stop.
func (s *Server) Pause(tb testing.TB) {
	tb.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.signalLocked(syscall.SIGSTOP); err != nil {
		tb.Fatalf("redistest: Pause %s: %v", s.addrLocked(), err)
	}
	s.paused = true
	if err := waitProcState(s.cmd.Process.Pid, true); err != nil {
		tb.Fatalf("redistest: Pause %s: %v", s.addrLocked(), err)
	}
}

// Resume sends SIGCONT to a paused server and waits until the process runs.
// It fails tb when the server is not running.
func (s *Server) Resume(tb testing.TB) {
	tb.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.signalLocked(syscall.SIGCONT); err != nil {
		tb.Fatalf("redistest: Resume %s: %v", s.addrLocked(), err)
	}
	s.paused = false
	if err := waitProcState(s.cmd.Process.Pid, false); err != nil {
		tb.Fatalf("redistest: Resume %s: %v", s.addrLocked(), err)
	}
}

// Do runs one command on a fresh short-lived TCP connection (no retries)
// and returns its reply; a nil reply (redis.Nil) is returned as nil. It
// fails tb on any other error.
func (s *Server) Do(tb testing.TB, args ...any) any {
	tb.Helper()
	v, err := s.do(args...)
	if err != nil {
		tb.Fatalf("redistest: %s: %v: %v", s.Addr(), args, err)
	}
	return v
}

// do runs one command on a fresh connection and returns reply and error.
func (s *Server) do(args ...any) (any, error) {
	c := redis.NewClient(&redis.Options{
		Addr:            s.Addr(),
		Protocol:        2,
		DisableIdentity: true,
		MaxRetries:      -1,
		PoolSize:        1,
		DialTimeout:     2 * time.Second,
		ReadTimeout:     5 * time.Second,
		WriteTimeout:    2 * time.Second,
	})
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	v, err := c.Do(ctx, args...).Result()
	if errors.Is(err, redis.Nil) {
		return nil, nil
	}
	return v, err
}

// info returns the INFO output of section, or an error.
func (s *Server) info(section string) (string, error) {
	v, err := s.do("INFO", section)
	if err != nil {
		return "", err
	}
	str, ok := v.(string)
	if !ok {
		return "", fmt.Errorf("INFO %s: unexpected reply %T", section, v)
	}
	return str, nil
}

// NetOutputBytes returns the bytes the server has sent to its clients since it started (INFO
// stats total_net_output_bytes): what reading from it costs the network. Each call adds its own
// INFO reply, about 2 KiB, to the figure the next one returns.
func (s *Server) NetOutputBytes(tb testing.TB) int64 {
	tb.Helper()
	n, err := strconv.ParseInt(s.infoField(tb, "stats", "total_net_output_bytes"), 10, 64)
	if err != nil {
		tb.Fatalf("redistest: %s: total_net_output_bytes: %v", s.Addr(), err)
	}
	return n
}

// CPU returns the CPU time the server has used since it started, user and system (INFO cpu).
func (s *Server) CPU(tb testing.TB) time.Duration {
	tb.Helper()
	var total float64
	for _, f := range []string{"used_cpu_user", "used_cpu_sys"} {
		v, err := strconv.ParseFloat(s.infoField(tb, "cpu", f), 64)
		if err != nil {
			tb.Fatalf("redistest: %s: %s: %v", s.Addr(), f, err)
		}
		total += v
	}
	return time.Duration(total * float64(time.Second))
}

// infoField returns field of INFO section, failing tb when the server does not answer or the
// section has no such field.
func (s *Server) infoField(tb testing.TB, section, field string) string {
	tb.Helper()
	info, err := s.info(section)
	if err != nil {
		tb.Fatalf("redistest: %s: %v", s.Addr(), err)
	}
	for line := range strings.Lines(info) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), field+":"); ok {
			return v
		}
	}
	tb.Fatalf("redistest: %s: INFO %s has no %s", s.Addr(), section, field)
	return ""
}

// args returns the redis-server command line for the current ports.
func (s *Server) args() []string {
	if s.kind == kindSentinel {
		return []string{filepath.Join(s.dir, "sentinel.conf"), "--sentinel"}
	}
	a := []string{
		"--port", strconv.Itoa(s.port),
		"--bind", "127.0.0.1",
		"--save", "",
		"--appendonly", "no",
		"--dir", s.dir,
		"--logfile", s.logPath,
		"--daemonize", "no",
	}
	if s.sock != "" {
		a = append(a, "--unixsocket", s.sock, "--unixsocketperm", "700")
	}
	if s.kind == kindCluster {
		a = append(a,
			"--cluster-enabled", "yes",
			"--cluster-config-file", "nodes.conf",
			"--cluster-node-timeout", "3000",
			"--cluster-port", strconv.Itoa(s.busPort),
			"--cluster-announce-ip", "127.0.0.1",
		)
	}
	a = append(a, s.tlsArgs()...)
	return append(a, s.opts.Args...)
}

// writeSentinelConf writes the sentinel configuration for the current port.
func (s *Server) writeSentinelConf() error {
	conf := fmt.Sprintf(`port %d
bind 127.0.0.1
daemonize no
dir %q
logfile %q
sentinel monitor %s 127.0.0.1 %d 2
sentinel down-after-milliseconds %s 1000
sentinel failover-timeout %s 5000
sentinel parallel-syncs %s 1
`, s.port, s.dir, s.logPath, masterName, s.monitorPort, masterName, masterName, masterName)
	return os.WriteFile(filepath.Join(s.dir, "sentinel.conf"), []byte(conf), 0o600)
}

// start launches the process and waits for PING. With newPorts it picks
// fresh ports on every attempt; otherwise it keeps the current ones and
// only retries the bind.
func (s *Server) start(tb testing.TB, newPorts bool) {
	tb.Helper()
	var lastErr error
	for attempt := 0; attempt < startAttempts; attempt++ {
		if attempt > 0 && !newPorts {
			time.Sleep(100 * time.Millisecond) // port still held by someone; poll again
		}
		err := s.startOnce(tb, newPorts)
		if err == nil {
			return
		}
		lastErr = err
		if !errors.Is(err, errBind) {
			break
		}
	}
	tb.Fatalf("redistest: starting redis-server: %v\n%s", lastErr, s.tailLog())
}

var (
	errBind   = errors.New("address already in use")
	errExited = errors.New("redis-server exited")
)

func (s *Server) startOnce(tb testing.TB, newPorts bool) error {
	s.mu.Lock()
	if newPorts {
		p, err := freePort()
		if err != nil {
			s.mu.Unlock()
			return err
		}
		s.port = p
		if s.kind == kindCluster {
			if s.busPort, err = freePortBut(s.port); err != nil {
				s.mu.Unlock()
				return err
			}
		}
		if s.opts.TLS != nil {
			if s.tlsPort, err = freePortBut(s.port); err != nil {
				s.mu.Unlock()
				return err
			}
		}
		if s.kind == kindSentinel {
			if err := s.writeSentinelConf(); err != nil {
				s.mu.Unlock()
				return err
			}
		}
	}
	logStart := fileSize(s.logPath)
	cmd := exec.Command(s.bin, s.args()...)
	cmd.Dir = s.dir
	cmd.SysProcAttr = sysProcAttr()
	out, err := os.OpenFile(filepath.Join(s.dir, "stdout.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		s.mu.Unlock()
		return err
	}
	cmd.Stdout, cmd.Stderr = out, out
	// Pdeathsig fires when the starting OS thread exits, so keep this
	// goroutine on one thread for the fork.
	runtime.LockOSThread()
	err = cmd.Start()
	runtime.UnlockOSThread()
	out.Close()
	if err != nil {
		s.mu.Unlock()
		return err
	}
	done := make(chan struct{})
	go func() {
		cmd.Wait()
		close(done)
	}()
	s.cmd, s.done, s.paused = cmd, done, false
	addr := s.addrLocked()
	s.mu.Unlock()

	deadline := time.Now().Add(startTimeout)
	for {
		select {
		case <-done:
			if strings.Contains(s.readLogFrom(logStart), "Address already in use") {
				return fmt.Errorf("%s: %w", addr, errBind)
			}
			return fmt.Errorf("%s: %w: %v", addr, errExited, cmd.ProcessState)
		default:
		}
		if ping(addr) == nil {
			return nil
		}
		if time.Now().After(deadline) {
			s.mu.Lock()
			s.killLocked()
			s.mu.Unlock()
			return fmt.Errorf("%s: no PONG within %v", addr, startTimeout)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (s *Server) addrLocked() string {
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(s.port))
}

// killLocked SIGKILLs the process (SIGCONT first if paused) and waits for
// it to exit. It is a no-op when the process is not running.
func (s *Server) killLocked() error {
	if s.cmd == nil || exited(s.done) {
		return nil
	}
	if s.paused {
		s.cmd.Process.Signal(syscall.SIGCONT)
		s.paused = false
	}
	s.cmd.Process.Signal(syscall.SIGKILL)
	select {
	case <-s.done:
		return nil
	case <-time.After(10 * time.Second):
		return errors.New("process did not exit after SIGKILL")
	}
}

func (s *Server) signalLocked(sig os.Signal) error {
	if s.cmd == nil || exited(s.done) {
		return errors.New("server is not running")
	}
	return s.cmd.Process.Signal(sig)
}

// stop kills the process; used in tb.Cleanup.
func (s *Server) stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.killLocked()
}

func (s *Server) tailLog() string {
	b, err := os.ReadFile(s.logPath)
	if err != nil {
		return fmt.Sprintf("(no log: %v)", err)
	}
	if o, err := os.ReadFile(filepath.Join(s.dir, "stdout.log")); err == nil && len(o) > 0 {
		b = append(b, "\n--- stdout/stderr ---\n"...)
		b = append(b, o...)
	}
	if len(b) > maxLogBytes {
		b = append([]byte("...\n"), b[len(b)-maxLogBytes:]...)
	}
	return string(b)
}

// readLogFrom returns the log written since offset off, followed by the
// captured stdout/stderr (where errors before the log file opens end up).
func (s *Server) readLogFrom(off int64) string {
	var out string
	if b, err := os.ReadFile(s.logPath); err == nil && off <= int64(len(b)) {
		out = string(b[off:])
	}
	if o, err := os.ReadFile(filepath.Join(s.dir, "stdout.log")); err == nil {
		out += string(o)
	}
	return out
}

func fileSize(p string) int64 {
	fi, err := os.Stat(p)
	if err != nil {
		return 0
	}
	return fi.Size()
}

func exited(done chan struct{}) bool {
	select {
	case <-done:
		return true
	default:
		return false
	}
}

// freePort returns a loopback TCP port that was free a moment ago.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// freePortBut returns a free loopback TCP port other than taken.
func freePortBut(taken int) (int, error) {
	for {
		p, err := freePort()
		if err != nil || p != taken {
			return p, err
		}
	}
}

// ping sends PING on a raw connection and expects +PONG.
func ping(addr string) error {
	c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(500 * time.Millisecond))
	if _, err := c.Write([]byte("*1\r\n$4\r\nPING\r\n")); err != nil {
		return err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if strings.TrimSpace(line) != "+PONG" {
		return fmt.Errorf("PING: %q", line)
	}
	return nil
}

// waitProcState polls /proc until the process is stopped (or no longer
// stopped). Where /proc is missing it returns at once.
func waitProcState(pid int, stopped bool) error {
	path := fmt.Sprintf("/proc/%d/stat", pid)
	deadline := time.Now().Add(5 * time.Second)
	for {
		b, err := os.ReadFile(path)
		if err != nil {
			return nil // no /proc: cannot check
		}
		// Format: pid (comm) S ...; comm may contain spaces, so look after ')'.
		st := byte('?')
		if i := strings.LastIndexByte(string(b), ')'); i >= 0 && i+2 < len(b) {
			st = b[i+2]
		}
		isStopped := st == 'T' || st == 't'
		if isStopped == stopped {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("process %d in state %c, want stopped=%v", pid, st, stopped)
		}
		time.Sleep(2 * time.Millisecond)
	}
}
