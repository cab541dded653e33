package main

import (
	"bytes"
	"fmt"
	"html"
	"math"
	"os"
	"time"
)

// writePlot writes an SVG line chart of stale reads (solid) and phantom
// reads (dashed) per time bucket, one colour per strategy.
func writePlot(path string, results []result, cfg config) error {
	const (
		width, height = 840, 380
		left, right   = 64, 250
		top, bottom   = 56, 48
		plotW         = width - left - right
		plotH         = height - top - bottom
	)
	colors := []string{"#d62728", "#ff7f0e", "#2ca02c", "#1f77b4"}
	bucket := results[0].bucket
	n := 1
	peak := 1
	for _, r := range results {
		n = max(n, len(r.staleSeries))
		for _, v := range r.staleSeries {
			peak = max(peak, v)
		}
		for _, v := range r.phantomSeries {
			peak = max(peak, v)
		}
	}
	yMax := niceCeil(peak)
	xMax := min(time.Duration(n)*bucket, cfg.Duration)
	x := func(t time.Duration) float64 { return left + float64(t)/float64(xMax)*plotW }
	y := func(v int) float64 { return top + plotH - float64(v)/float64(yMax)*plotH }

	var b bytes.Buffer
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="12">`+"\n", width, height, width, height)
	fmt.Fprintf(&b, `<rect width="%d" height="%d" fill="white"/>`+"\n", width, height)
	fmt.Fprintf(&b, `<text x="%d" y="20" font-size="15">Stale (solid) and phantom (dashed) reads per %s</text>`+"\n", left, bucket)
	fmt.Fprintf(&b, `<text x="%d" y="38" fill="#666">%d accounts, %d writers, %d readers, %.0f%% rolled back, invalidation delay %s</text>`+"\n",
		left, cfg.Accounts, cfg.Writers, cfg.Readers, cfg.RollbackRatio*100, cfg.InvalidationDelay)
	// Grid and axes.
	for i := 0; i <= 4; i++ {
		v := yMax * i / 4
		fmt.Fprintf(&b, `<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#ddd"/>`+"\n", left, y(v), left+plotW, y(v))
		fmt.Fprintf(&b, `<text x="%d" y="%.1f" text-anchor="end">%d</text>`+"\n", left-6, y(v)+4, v)
	}
	step := niceCeil(int(math.Ceil(xMax.Seconds() / 8)))
	for s := 0; time.Duration(s)*time.Second <= xMax; s += step {
		px := x(time.Duration(s) * time.Second)
		fmt.Fprintf(&b, `<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#999"/>`+"\n", px, top+plotH, px, top+plotH+4)
		fmt.Fprintf(&b, `<text x="%.1f" y="%d" text-anchor="middle">%ds</text>`+"\n", px, top+plotH+18, s)
	}
	fmt.Fprintf(&b, `<polyline points="%d,%d %d,%d %d,%d" fill="none" stroke="#333"/>`+"\n", left, top, left, top+plotH, left+plotW, top+plotH)
	fmt.Fprintf(&b, `<text x="%d" y="%d" text-anchor="middle">time since the strategy's workload began</text>`+"\n", left+plotW/2, height-8)
	// One line per strategy, with its legend entry.
	for i, r := range results {
		c := colors[i%len(colors)]
		line := func(series []int, dash string) {
			fmt.Fprintf(&b, `<polyline fill="none" stroke="%s" stroke-width="2"%s points="`, c, dash)
			for j := range n {
				v := 0
				if j < len(series) {
					v = series[j]
				}
				mid := min(time.Duration(j)*bucket+bucket/2, xMax)
				fmt.Fprintf(&b, "%.1f,%.1f ", x(mid), y(v))
			}
			b.WriteString(`"/>` + "\n")
		}
		line(r.staleSeries, "")
		line(r.phantomSeries, ` stroke-dasharray="5,3"`)
		ly := top + 10 + 36*i
		fmt.Fprintf(&b, `<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="%s" stroke-width="2"/>`+"\n", left+plotW+12, ly, left+plotW+32, ly, c)
		fmt.Fprintf(&b, `<text x="%d" y="%d">%s</text>`+"\n", left+plotW+38, ly+4, html.EscapeString(r.info.title))
		fmt.Fprintf(&b, `<text x="%d" y="%d" fill="#666">%d stale, %d phantom</text>`+"\n", left+plotW+38, ly+19, r.stale, r.phantom)
	}
	b.WriteString("</svg>\n")
	return os.WriteFile(path, b.Bytes(), 0o644)
}

// niceCeil rounds v up to 1, 2, 4, 6 or 8 times a power of ten: a round
// number whose quarters are round too.
func niceCeil(v int) int {
	if v <= 1 {
		return 1
	}
	p := 1
	for p*10 < v {
		p *= 10
	}
	for _, m := range []int{1, 2, 4, 6, 8, 10} {
		if m*p >= v {
			return m * p
		}
	}
	return 10 * p
}
