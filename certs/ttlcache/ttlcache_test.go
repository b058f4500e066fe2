package ttlcache

import (
	"fmt"
	"testing"
	"time"
)

func TestGetPutExpiry(t *testing.T) {
	now := time.Unix(1000, 0)
	c := New[string](10)
	c.Put("a", "x", now.Add(time.Minute), now)
	if v, ok := c.Get("a", now); !ok || v != "x" {
		t.Fatalf("get = %q %v", v, ok)
	}
	if _, ok := c.Get("a", now.Add(time.Minute)); ok {
		t.Fatal("expired entry returned")
	}
	if c.Len() != 0 {
		t.Fatal("expired entry kept after Get")
	}
	c.Put("b", "y", now.Add(time.Hour), now)
	c.Clear()
	if _, ok := c.Get("b", now); ok {
		t.Fatal("Clear kept an entry")
	}
}

func TestBounded(t *testing.T) {
	now := time.Unix(1000, 0)
	c := New[int](100)
	for i := 0; i < 1000; i++ {
		c.Put(fmt.Sprint(i), i, now.Add(time.Duration(i)*time.Second+time.Hour), now)
		if c.Len() > 100 {
			t.Fatalf("%d entries, max 100", c.Len())
		}
	}
	if v, ok := c.Get("999", now); !ok || v != 999 {
		t.Fatal("the newest, longest-lived entry was evicted")
	}
	// All expiring at the same instant still stays bounded.
	d := New[int](10)
	for i := 0; i < 100; i++ {
		d.Put(fmt.Sprint(i), i, now.Add(time.Hour), now)
		if d.Len() > 10 {
			t.Fatalf("%d entries, max 10", d.Len())
		}
	}
}
