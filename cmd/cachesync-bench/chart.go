package main

import (
	"bytes"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"strings"
)

// chart draws one horizontal bar per figure that has a ratio: the median ratio to its
// ceiling or budget, a whisker from the min to the max run, and a line at 1.0. It uses
// only the standard library (and the small bitmap font below) so that the benchmark
// adds no dependency to the module.
func chart(rep *report) ([]byte, error) {
	var bars []*figure
	for _, f := range rep.Figures {
		if f.Versus != "" {
			bars = append(bars, f)
		}
	}
	const (
		scale  = 2
		rowH   = 28
		top    = 64
		left   = 540
		right  = 1250
		width  = 1330
		barPad = 6
		// maxLabel is as many glyphs (4×scale wide) as fit left of the bars.
		maxLabel = (left - 10 - 4*scale) / (4 * scale)
	)
	height := top + rowH*len(bars) + 50
	img := image.NewRGBA(image.Rect(0, 0, width, height))
	fill(img, img.Rect, color.RGBA{255, 255, 255, 255})

	maxRatio := 1.2
	for _, f := range bars {
		maxRatio = max(maxRatio, f.RatioMax*1.05)
	}
	maxRatio = min(maxRatio, 4)
	// A ratio below 0 (a difference cachesync − floor can be negative) is drawn at 0.
	xOf := func(r float64) int { return left + int(float64(right-left)*max(0, min(r, maxRatio))/maxRatio) }

	text(img, 10, 10, scale, fmt.Sprintf("cachesync benchmark: ratio to ceiling or budget (median, whisker min-max of %d runs)", rep.Options.Runs), color.RGBA{0, 0, 0, 255})
	text(img, 10, 34, scale, fmt.Sprintf("%v cpus, %v", rep.Machine["cpus"], rep.Machine["cpu"]), color.RGBA{90, 90, 90, 255})

	grey := color.RGBA{215, 215, 215, 255}
	for r := 0.0; r <= maxRatio+1e-9; r += 0.25 {
		x := xOf(r)
		fill(img, image.Rect(x, top-4, x+1, top+rowH*len(bars)), grey)
		if int(r*100)%50 == 0 {
			text(img, x-12, top+rowH*len(bars)+6, scale, fmt.Sprintf("%.1f", r), color.RGBA{60, 60, 60, 255})
		}
	}
	one := xOf(1)
	for i, f := range bars {
		y := top + i*rowH
		label := f.Workload + ": " + strings.TrimPrefix(f.Metric, "cachesync ")
		if len(label) > maxLabel {
			label = label[:maxLabel]
		}
		text(img, 10, y+8, scale, label, color.RGBA{0, 0, 0, 255})
		c := color.RGBA{70, 130, 180, 255}
		if f.TargetMet != nil {
			if *f.TargetMet {
				c = color.RGBA{60, 160, 80, 255}
			} else {
				c = color.RGBA{200, 70, 60, 255}
			}
		}
		fill(img, image.Rect(left, y+barPad, max(left+1, xOf(f.RatioMed)), y+rowH-barPad), c)
		lo, hi := xOf(f.RatioMin), xOf(f.RatioMax)
		mid := y + rowH/2
		black := color.RGBA{0, 0, 0, 255}
		fill(img, image.Rect(lo, mid, hi+1, mid+1), black)
		fill(img, image.Rect(lo, mid-4, lo+1, mid+5), black)
		fill(img, image.Rect(hi, mid-4, hi+1, mid+5), black)
		text(img, min(hi+6, width-60), y+8, scale, fmt.Sprintf("%.2f", f.RatioMed), black)
	}
	fill(img, image.Rect(one, top-8, one+2, top+rowH*len(bars)), color.RGBA{0, 0, 0, 255})
	text(img, 10, top+rowH*len(bars)+28, scale, "green: target met, red: missed, blue: no target. Line: 1.0 = the ceiling or budget.", color.RGBA{60, 60, 60, 255})

	var buf bytes.Buffer
	if err := png.Encode(&buf, img); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

func fill(img *image.RGBA, r image.Rectangle, c color.RGBA) {
	r = r.Intersect(img.Rect)
	for y := r.Min.Y; y < r.Max.Y; y++ {
		for x := r.Min.X; x < r.Max.X; x++ {
			img.SetRGBA(x, y, c)
		}
	}
}

// text draws s with a 3×5 bitmap font, each pixel scale×scale, 4×scale per glyph.
func text(img *image.RGBA, x, y, scale int, s string, c color.RGBA) {
	for _, r := range strings.ToUpper(s) {
		g, ok := glyphs[r]
		if !ok {
			g = glyphs['?']
		}
		for row := 0; row < 5; row++ {
			for col := 0; col < 3; col++ {
				if g[row*3+col] == '#' {
					fill(img, image.Rect(x+col*scale, y+row*scale, x+(col+1)*scale, y+(row+1)*scale), c)
				}
			}
		}
		x += 4 * scale
	}
}

// glyphs: 5 rows of 3 pixels each, '#' set.
var glyphs = map[rune]string{
	' ': "...............", '?': "##...#.#.....#.", '.': "............#..", ',': "..........#.#..",
	'-': "......###......", '−': "......###......", ':': "....#.....#....", '/': "..#..#.#..#.#..", '%': "#.#..#.#..#.#.#",
	'(': ".#.#..#..#...#.", ')': ".#...#..#..#.#.", '[': "##.#..#..#..##.", ']': ".##..#..#..#.##",
	'<': "..#.#.#...#...#", '>': "#...#...#.#.#..", '=': "...###...###...", '+': "....#.###.#....",
	'≥': "#...#.#.#..###.", '→': ".....####..#...", 'µ': "#.##.##.####...", '–': "......###......",
	'×': "#.#.#.#.#......", '_': "............###",
	'0': "####.##.##.####", '1': ".#.##..#..#.###", '2': "###..#####..###", '3': "###..###..#####",
	'4': "#.##.####..#..#", '5': "####..###..####", '6': "####..####.####", '7': "###..#..#..#..#",
	'8': "####.#####.####", '9': "####.####..####",
	'A': ".#.#.#####.##.#", 'B': "##.#.###.#.###.", 'C': ".###..#..#...##", 'D': "##.#.##.##.###.",
	'E': "####..##.#..###", 'F': "####..##.#..#..", 'G': ".###..#.##.#.##", 'H': "#.##.#####.##.#",
	'I': "###.#..#..#.###", 'J': "..#..#..##.#.#.", 'K': "#.##.###.#.##.#", 'L': "#..#..#..#..###",
	'M': "#.########.##.#", 'N': "##.#.##.##.##.#", 'O': ".#.#.##.##.#.#.", 'P': "##.#.###.#..#..",
	'Q': ".#.#.##.###..##", 'R': "##.#.###.#.##.#", 'S': ".###...#...###.", 'T': "###.#..#..#..#.",
	'U': "#.##.##.##.####", 'V': "#.##.##.##.#.#.", 'W': "#.##.########.#", 'X': "#.##.#.#.#.##.#",
	'Y': "#.##.#.#..#..#.", 'Z': "###..#.#.#..###",
}
