package policy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/fsnotify/fsnotify"
)

// Watch watches paths (files, or directories whose entries count) and calls
// onChange once things have been quiet for debounce after a change. It sets
// the watches up before returning, then watches in a goroutine of its own
// until ctx is done; onChange is called from that goroutine, never twice at
// once. It returns an error when a watch cannot be set up (then nothing is
// watched).
//
// A file is watched through its directory, since editors and deployment
// tools replace files by renaming a new one over them: a change to the file's
// name counts, and so does any change in the directory after which the file
// (followed through symbolic links, as in a Kubernetes ConfigMap's "..data"
// swap) is no longer the same file, size or modification time. A file that
// does not exist yet is watched for its creation. Watch errors (such as an
// overflowing event queue) are logged with slog.Default and count as a
// change, since events may have been lost.
func Watch(ctx context.Context, paths []string, debounce time.Duration, onChange func()) error {
	if onChange == nil {
		return errors.New("policy: watch: onChange is nil")
	}
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("policy: watch: %w", err)
	}
	ws := &watchState{
		files: map[string]fileStamp{},
		dirs:  map[string]bool{},
	}
	added := map[string]bool{}
	for _, p := range paths {
		abs, err := filepath.Abs(p)
		if err != nil {
			w.Close()
			return fmt.Errorf("policy: watch %s: %w", p, err)
		}
		watchDir := filepath.Dir(abs)
		if fi, err := os.Stat(abs); err == nil && fi.IsDir() {
			ws.dirs[abs] = true
			watchDir = abs
		} else {
			ws.files[abs] = stamp(abs)
		}
		if added[watchDir] {
			continue
		}
		if err := w.Add(watchDir); err != nil {
			w.Close()
			return fmt.Errorf("policy: watch %s: %w", watchDir, err)
		}
		added[watchDir] = true
	}
	go ws.loop(ctx, w, debounce, onChange)
	return nil
}

type watchState struct {
	files map[string]fileStamp // watched files, by absolute path
	dirs  map[string]bool      // watched directories, by absolute path
}

// fileStamp identifies a file's content well enough to notice a
// replacement: os.SameFile (device and inode on Unix), size and mtime.
type fileStamp struct {
	fi os.FileInfo // nil when the file does not exist
}

func stamp(path string) fileStamp {
	fi, err := os.Stat(path)
	if err != nil {
		return fileStamp{}
	}
	return fileStamp{fi: fi}
}

func (s fileStamp) same(t fileStamp) bool {
	if s.fi == nil || t.fi == nil {
		return s.fi == nil && t.fi == nil
	}
	return os.SameFile(s.fi, t.fi) && s.fi.Size() == t.fi.Size() && s.fi.ModTime().Equal(t.fi.ModTime())
}

// restamp records the files' current state and reports whether any differs
// from what was recorded.
func (ws *watchState) restamp() bool {
	changed := false
	for path, old := range ws.files {
		now := stamp(path)
		if !now.same(old) {
			changed = true
		}
		ws.files[path] = now
	}
	return changed
}

// direct reports whether an event names a watched file or an entry of a
// watched directory.
func (ws *watchState) direct(name string) bool {
	name = filepath.Clean(name)
	if _, ok := ws.files[name]; ok {
		return true
	}
	return ws.dirs[filepath.Dir(name)]
}

func (ws *watchState) loop(ctx context.Context, w *fsnotify.Watcher, debounce time.Duration, onChange func()) {
	defer w.Close()
	timer := time.NewTimer(time.Hour)
	timer.Stop() // armed by the first event; Go 1.23+ timers deliver no stale value after Stop
	defer timer.Stop()
	pending, force := false, false
	arm := func() {
		timer.Reset(debounce) // Go 1.23+: Reset drains a stale expiry
		pending = true
	}
	for {
		select {
		case <-ctx.Done():
			return
		case ev, ok := <-w.Events:
			if !ok {
				return
			}
			if ev.Op == fsnotify.Chmod {
				continue // attribute changes only
			}
			if ws.direct(ev.Name) {
				force = true
			}
			arm()
		case err, ok := <-w.Errors:
			if !ok {
				return
			}
			slog.Default().Warn("policy: watch error; reloading in case events were lost", "err", err)
			force = true
			arm()
		case <-timer.C:
			if !pending {
				continue
			}
			pending = false
			changed := ws.restamp()
			if force || changed {
				force = false
				onChange()
			}
		}
	}
}
